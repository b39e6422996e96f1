"""Run a plan with Ray Tune: Optuna as the search algorithm, MLflow as the record.

Optuna (through Ray Tune's ``OptunaSearch``; the spaces are ``search.py``'s) drives the
trials, ASHA may stop weak ones early, a Tune callback records every trial in MLflow. The
study is journaled next to the Ray results; ``--resume`` restores Ray Tune's experiment
(searcher and MLflow logger state included) and continues it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune

from experiments.tasks.registry import get_task
from experiments.trial import AXES, ENCODER_CONFIG, TrialSpec
from orchestrator import console
from orchestrator.data_parallel import stoppable
from orchestrator.failures import quiet_trial_failures
from orchestrator.plugins import LoadedPlugin, load_plugins, runtime_env
from orchestrator.progress import ProgressLine
from orchestrator.resources import (
    cpus_per_gpu,
    data_parallel_workers,
    per_trial_resources,
    worker_resources,
)
from orchestrator.schedulers import PlateauStopper, QueuedASHAScheduler, QueuedFIFOScheduler
from orchestrator.search import make_searcher, release_stale_trials, trial_count
from orchestrator.spec import SpecError, SweepSpec
from orchestrator.store import open_client, run_rows
from orchestrator.tracking import MlflowTrialLogger, start_parent_run
from orchestrator.trainable import tune_trial

SWEEP_FILE = "lmblocks_sweep.json"
SCHEDULERS = ("fifo", "asha")


@dataclass
class SweepOutcome:
    experiment: str
    parent_run_id: str
    finished: int
    failed: int
    storage: str
    seconds: float
    tracking_uri: str


def gpu_memory_bytes(override_gb: float | None = None) -> float:
    """The card whose share a trial asks for: --gpu-memory-gb, the driver's GPU, or 80 GB."""
    if override_gb:
        return override_gb * 10**9
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory)
    return 80e9


def make_scheduler(name: str, metric: str, mode: str, epochs: int):
    """Tune's FIFO or ASHA, choosing the next trial without scanning every trial a step
    (``orchestrator/schedulers.py``)."""
    if name == "asha":  # stops weak trials on the per-epoch validation metric
        return QueuedASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=epochs,
                                   grace_period=max(1, epochs // 4), reduction_factor=2)
    return QueuedFIFOScheduler()


def run_sweep(
    spec: SweepSpec,
    plan: list[TrialSpec],
    *,
    tracking_uri: str,
    experiment: str,
    storage: str,
    address: str | None = None,
    weights_dir: str | None = None,
    data_dir: str | None = None,
    quiet: bool = False,
    verbose: bool = False,
    max_failures: int = 2,
    search: str = "grid",
    sampler: str = "tpe",
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    scheduler: str = "fifo",
    search_hparams: str | None = None,
    samples_per_cell: int = 1,
    gpus_per_trial: float | None = None,
    gpu_memory_gb: float | None = None,
    cpus_per_trial: int | None = None,
    peak_tflops: float | None = None,
    plugins: Sequence[LoadedPlugin] = (),
) -> SweepOutcome:
    start = time.time()
    task = get_task(plan[0].task)
    # The MLflow store opens (creating a SQLite schema: ~1.5 s) while Ray starts (~3 s of
    # waiting for its processes): two fixed costs of every sweep overlapped, not added.
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(_open_tracking, tracking_uri, experiment, spec, len(plan))
        try:
            _start_ray(address, quiet, verbose, plugins)
            check_cluster_holds(gpus_per_trial, cpus_per_trial)
            client, parent = opening.result()
        except BaseException:
            ray.shutdown()  # a no-op when Ray did not start
            if opening.exception() is None:  # the sweep run exists: it did not run
                opened_client, opened_parent = opening.result()
                opened_client.set_terminated(opened_parent, "FAILED")
            raise
    try:
        logger = MlflowTrialLogger(tracking_uri, experiment, parent, background=True)
        gpu_bytes = gpu_memory_bytes(gpu_memory_gb)
        trainable = _trainable(weights_dir, data_dir, gpus_per_trial, gpu_bytes,
                               cpus_per_trial, peak_tflops, plugins)
        name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        local = "://" not in storage
        searcher = make_searcher(
            plan, search=search, sampler=sampler, metric=task.metric, mode=task.mode,
            study_path=Path(storage) / name / "optuna.journal" if local else None,
            study_name=experiment, search_hparams=search_hparams,
        )
        total = trial_count(plan, search, num_samples, search_hparams, samples_per_cell)
        tuner = tune.Tuner(
            trainable,
            param_space=_hparams(plan[0]),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=make_scheduler(scheduler, task.metric, task.mode, spec.hparams.epochs),
                num_samples=total,
                max_concurrent_trials=concurrent_trials(max_concurrent, gpus_per_trial,
                                                        cpus_per_trial),
                # a new worker re-imports torch/transformers: ~10 s a trial; a data-parallel
                # trial's driver imports little, and a stopped one must end its Train run
                reuse_actors=data_parallel_workers(gpus_per_trial) == 1,
                trial_dirname_creator=lambda t: f"{TrialSpec.from_config(t.config).run_name}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                stop=(PlateauStopper(task.metric, task.mode)
                      if any(t.hparams.auto_epochs for t in plan) else None),
                callbacks=[logger] if quiet else [logger, ProgressLine(
                    total, task.metric, task.mode)],
                # Tune forces an experiment snapshot (O(trials)) whenever a trial has saved
                # num_to_keep checkpoints since the last one. At 1 that is every epoch of
                # every trial: O(trials^2) over a study (bench/scale.py). At 2 a trial must
                # checkpoint twice within Tune's own snapshot period (>= 10 s, ~5% of the
                # time) to force one. The snapshot may then lag Optuna's journal; the
                # searcher and the logger tolerate that on --resume (JournalAheadOptunaSearch,
                # MlflowTrialLogger.set_state).
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                verbose=0,  # our one-line progress view instead of Tune's tables
            ),
        )
        path = Path(storage) / name
        if local:  # what --resume needs to continue this sweep (Ray's own state is beside it)
            path.mkdir(parents=True, exist_ok=True)
            (path / SWEEP_FILE).write_text(json.dumps({
                "experiment": experiment, "parent_run_id": parent, "tracking_uri": tracking_uri,
                "weights_dir": weights_dir, "data_dir": data_dir,
                "gpus_per_trial": gpus_per_trial,
                "gpu_memory_bytes": gpu_bytes,
                "cpus_per_trial": cpus_per_trial,
                "peak_tflops": peak_tflops,
                "plugins": [p.ref for p in plugins if p.ref],  # installed ones: found again
            }))
        client.set_tag(parent, "ray.experiment_path", str(path))
        if plugins:
            client.set_tag(parent, "lmblocks.plugins", "; ".join(
                f"{p.name}: {p.registered.describe()}" for p in plugins))
        return _fit(tuner, tracking_uri, experiment, parent, str(path), start)
    finally:
        ray.shutdown()


def resume_sweep(path: str | Path, *, address: str | None = None, quiet: bool = False,
                 verbose: bool = False) -> SweepOutcome:
    """Continue an interrupted sweep (Ray Tune's experiment restore): finished trials are not
    rerun, unfinished ones restart from their last epoch checkpoint, errored ones are retried;
    their MLflow runs are the same runs (the logger's trial -> run map is Tune callback state)."""
    start = time.time()
    meta = json.loads((Path(path) / SWEEP_FILE).read_text())
    plugins = load_plugins(meta.get("plugins", []))  # as the sweep had them (SpecError first)
    _start_ray(address, quiet, verbose, plugins)
    try:
        check_cluster_holds(meta["gpus_per_trial"], meta.get("cpus_per_trial"))
        trainable = _trainable(meta["weights_dir"], meta.get("data_dir"),
                               meta["gpus_per_trial"], meta["gpu_memory_bytes"],
                               meta.get("cpus_per_trial"), meta.get("peak_tflops"), plugins)
        journal = Path(path) / "optuna.journal"
        if journal.is_file():
            live = {int(t.config["optuna_trial"]) for t in
                    tune.ExperimentAnalysis(str(path)).trials if "optuna_trial" in t.config}
            if stale := release_stale_trials(journal, meta["experiment"], live):
                print(f"released Optuna trials {stale}: asked for by the dead driver, never "
                      "started; their cells will be asked for again")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        return _fit(tuner, meta["tracking_uri"], meta["experiment"], meta["parent_run_id"],
                    str(path), start)
    finally:
        ray.shutdown()


def _open_tracking(tracking_uri: str, experiment: str, spec: SweepSpec,
                   n_trials: int) -> tuple[MlflowClient, str]:
    client = open_client(tracking_uri)
    return client, start_parent_run(client, experiment, spec, n_trials)


def _trainable(weights_dir: str | None, data_dir: str | None, gpus_per_trial: float | None,
               gpu_bytes: float, cpus_per_trial: int | None, peak_tflops: float | None,
               plugins: Sequence[LoadedPlugin] = ()):
    """The trial function with its fixed arguments (the plugins its worker imports first) and
    its per-trial resources, sized from the cluster Ray is connected to (its GPUs, and the
    CPUs per GPU of its GPU nodes). ``--gpus-per-trial N`` > 1: N data-parallel workers
    per trial (``orchestrator.data_parallel``), refused in one line where the cluster has
    not that many GPUs (``check_cluster_holds``)."""
    cluster = ray.cluster_resources()
    per_gpu = cpus_per_gpu(ray.nodes())
    workers = data_parallel_workers(gpus_per_trial)
    cpus, use_gpu = worker_resources(cluster.get("GPU", 0), cpus_per_trial, per_gpu)
    trial = tune.with_parameters(tune_trial, weights_dir=weights_dir, data_dir=data_dir,
                                 peak_tflops=peak_tflops, plugins=tuple(plugins),
                                 workers=workers, cpus_per_worker=cpus, use_gpu=use_gpu)
    return tune.with_resources(
        stoppable(trial) if workers > 1 else trial,  # a stopped trial ends its Train run
        per_trial_resources(cluster.get("GPU", 0), gpus_per_trial, gpu_bytes,
                            cpus_per_trial, per_gpu),
    )


def check_cluster_holds(gpus_per_trial: float | None, cpus_per_trial: int | None) -> None:
    """SpecError, one line, when the cluster Ray is connected to cannot hold one trial's
    data-parallel workers (each would wait for resources forever)."""
    workers = data_parallel_workers(gpus_per_trial)
    if workers == 1:
        return
    cluster = ray.cluster_resources()
    cpus, use_gpu = worker_resources(cluster.get("GPU", 0), cpus_per_trial,
                                     cpus_per_gpu(ray.nodes()))
    have, need = ((cluster.get("GPU", 0), workers) if use_gpu
                  else (cluster.get("CPU", 0), workers * cpus))
    if need > have:
        raise SpecError(
            f"--gpus-per-trial {workers}: a trial's {workers} workers need {need:g} "
            f"{'GPUs' if use_gpu else 'CPUs (the cluster has no GPU)'}, the cluster has "
            f"{have:g}; valid: at most {int(have) // (1 if use_gpu else cpus)}")


def concurrent_trials(max_concurrent: int | None, gpus_per_trial: float | None,
                      cpus_per_trial: int | None) -> int | None:
    """``--max-concurrent``, else for data-parallel trials as many as the cluster holds at
    once (Ray's advice for Train runs inside Tune: a trial started beyond that would hold a
    Train driver that waits for workers, and the searcher's suggestion with it)."""
    workers = data_parallel_workers(gpus_per_trial)
    if max_concurrent is not None or workers == 1:
        return max_concurrent
    cluster = ray.cluster_resources()
    cpus, use_gpu = worker_resources(cluster.get("GPU", 0), cpus_per_trial,
                                     cpus_per_gpu(ray.nodes()))
    have = cluster.get("GPU", 0) if use_gpu else cluster.get("CPU", 0) // cpus
    return max(1, int(have) // workers)


def ray_address(address: str | None) -> str:
    """What ``ray.init`` is given: ``--address``, else ``$RAY_ADDRESS`` (how Ray's job
    submission names the cluster), else ``local``: a Ray of the sweep's own. Not Ray's own
    default, which joins whatever cluster was last started on this machine (its address in
    /tmp/ray/ray_current_cluster): a sweep that meant to run alone would join another user's
    or test's ``ray start`` cluster and die with it, silently, when it is stopped."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def _start_ray(address: str | None, quiet: bool, verbose: bool,
               plugins: Sequence[LoadedPlugin] = ()) -> None:
    level = console.configure(verbose)  # the libraries' INFO lines only with -v
    # Per-epoch checkpoints of a seconds-long epoch trip Tune's snapshot-frequency warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow is the record: Tune's own CSV, JSON and TensorBoard files per trial would be
    # written by the driver and copied to storage with every experiment snapshot (a third of
    # the driver's CPU a trial; bench/scale.py). --resume reads Tune's experiment state, not
    # them. TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 brings them back.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    quiet_trial_failures()  # a failed trial: no traceback here, one line at the end
    # The plugins that are not installed (named by path, or importable only from here) go to
    # every worker of this job, on this machine or a cluster: Ray's py_modules.
    ray.init(address=ray_address(address), include_dashboard=False, log_to_driver=not quiet,
             configure_logging=not quiet, logging_level=level, runtime_env=runtime_env(plugins))
    # Tune lets a searcher keep ONE trial pending by default: on a cluster the trials would
    # start one actor start-up (~10 s) after another. Let as many wait as there are CPUs.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG",
                          str(max(2, int(ray.cluster_resources().get("CPU", 1)))))


def _fit(tuner, tracking_uri: str, experiment: str, parent: str, path: str, start: float):
    client = MlflowClient(tracking_uri)
    try:
        tuner.fit()
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    finished, failed = close_orphans(client, parent)
    client.set_tag(parent, "trials_finished", str(finished))
    client.set_tag(parent, "trials_failed", str(failed))
    client.set_terminated(parent, "FINISHED")
    return SweepOutcome(experiment, parent, finished, failed, path, time.time() - start,
                        tracking_uri)


def close_orphans(client: MlflowClient, parent: str) -> tuple[int, int]:
    """Child runs still RUNNING after the sweep (their driver died before Tune saved them,
    and Tune ran the cell again) are ended KILLED; returns (finished, failed) counts."""
    exp_id = client.get_run(parent).info.experiment_id
    runs = run_rows(client, exp_id, "mlflow.parentRunId", parent)
    for run in runs:
        if run.status == "RUNNING":
            client.set_tag(run.run_id, "orphaned", "its driver died; the cell ran again")
            client.set_terminated(run.run_id, "KILLED")
    statuses = [r.status for r in runs]
    return statuses.count("FINISHED"), statuses.count("FAILED")


def _hparams(trial: TrialSpec) -> dict[str, object]:
    """What every trial of the sweep shares (the searcher gives each its row's axes and
    encoder choice: ``orchestrator.search.cell_config``)."""
    return {k: v for k, v in trial.to_config().items()
            if k not in AXES and k not in ENCODER_CONFIG}
