"""Run a plan with Ray Tune: Optuna as the search algorithm, MLflow as the record.

Optuna (through Ray Tune's ``OptunaSearch``) drives the trials: ``--search grid`` walks
the plan's rows with Optuna's GridSampler (each row once, ``num_samples`` = rows);
``--search optuna`` samples a define-by-run conditional space built from the plan (TPE by
default). The study is journaled next to the Ray results; ``--resume`` restores Ray Tune's
experiment (searcher and MLflow logger state included) and continues it.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from mlflow.tracking import MlflowClient
from optuna.samplers import (
    CmaEsSampler,
    GPSampler,
    GridSampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from experiments.tasks.registry import get_task
from orchestrator.plan import TrialSpec
from orchestrator.progress import ProgressLine
from orchestrator.resources import per_trial_resources
from orchestrator.spec import SweepSpec
from orchestrator.tracking import MlflowTrialLogger, run_name, start_parent_run
from orchestrator.trainable import tune_trial

AXES = ("family", "size", "layers", "task", "control", "seed")
SWEEP_FILE = "lmblocks_sweep.json"


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


SAMPLERS = {"tpe": TPESampler, "random": RandomSampler, "cmaes": CmaEsSampler,
            "gp": GPSampler, "qmc": QMCSampler}
SEARCHES = ("grid", "optuna")
SCHEDULERS = ("fifo", "asha")


HPARAM_SEARCHES = ("joint", "per-cell")


def suggest_hparams(trial, suffix: str = "") -> dict[str, object]:
    """The searched hyperparameters; ``suffix`` names a cell, so that each cell's search is
    modelled on its own trials only (a parameter's history is its name's)."""
    from encoders.frozen_block import ADAPTER_INITS

    return {
        "lr": trial.suggest_float(f"lr{suffix}", 1e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float(f"weight_decay{suffix}", 1e-4, 0.3, log=True),
        "adapter_init": trial.suggest_categorical(f"adapter_init{suffix}", list(ADAPTER_INITS)),
    }


class GridCells:
    """Define-by-run space of the exhaustive grid: one categorical ``cell`` (a plan row's
    index) that Optuna's GridSampler walks without repeats; the row's axes are returned as
    constants, with the Optuna trial's number (``optuna_trial``), so that a resumed sweep can
    tell the study's trials Tune still knows from those its dead driver asked for and never
    saved (``release_stale_trials``)."""

    def __init__(self, plan: list[TrialSpec]) -> None:
        self.rows = [cell_config(t) for t in plan]

    def __call__(self, trial) -> dict[str, object]:
        cell = trial.suggest_categorical("cell", list(range(len(self.rows))))
        return {**self.rows[cell], "optuna_trial": trial.number}


def cell_config(t: TrialSpec) -> dict[str, object]:
    """A plan row's structural axes plus ``cell_key``, the row's identity in MLflow (its
    trial key), kept when a hyperparameter search changes the run's own key."""
    return {**{k: v for k, v in t.to_config().items() if k in AXES}, "cell_key": t.key}


class PerCellHparams:
    """Hyperparameters searched per cell: every plan row runs ``samples`` trials, taken
    round-robin (the row with the fewest trials so far, lowest first; trials released after
    a driver crash do not count), each with hyperparameters the sampler proposes from that
    row's earlier trials alone."""

    def __init__(self, plan: list[TrialSpec]) -> None:
        self.rows = [cell_config(t) for t in plan]

    def __call__(self, trial) -> dict[str, object]:
        counts = Counter(
            t.user_attrs["cell"] for t in trial.study.get_trials(deepcopy=False)
            if "cell" in t.user_attrs and not t.system_attrs.get(RELEASED))
        cell = min(range(len(self.rows)), key=lambda i: (counts[i], i))
        trial.set_user_attr("cell", cell)
        return {**self.rows[cell], **suggest_hparams(trial, f"|cell{cell}"),
                "optuna_trial": trial.number}


RELEASED = "lmblocks_released"


def release_stale_trials(study_path: Path, study_name: str, live: set[int]) -> list[int]:
    """After a driver crash, the study's RUNNING trials that Tune's restored experiment does
    not know (asked for, never saved) are ended FAIL and marked released, so that their
    cells are asked for again: GridSampler would otherwise count them as running forever
    and, once the rest is done, pick at random among unfinished cells, possibly one that
    is running, twice. Returns the released trial numbers."""
    storage = JournalStorage(JournalFileBackend(str(study_path)))
    study = optuna.load_study(study_name=study_name, storage=storage)
    released = []
    for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        if t.number in live:
            continue
        storage.set_trial_system_attr(t._trial_id, "search_space", {})  # GridSampler: not ours
        storage.set_trial_system_attr(t._trial_id, RELEASED, True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        released.append(t.number)
    return released


class CellGridSampler(GridSampler):
    """Optuna's GridSampler without its ``study.stop()`` once the grid is used up: Tune's
    ``num_samples`` already ends the sweep there, and ``stop()`` outside ``optimize()`` only
    raises (Tune logs it as a warning after every grid sweep's last trial)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def optuna_exhaustive(
    plan: list[TrialSpec], metric: str, mode: str, seed: int = 0, **study
) -> OptunaSearch:
    """Every plan row exactly once, driven by Optuna's GridSampler."""
    cells = GridCells(plan)
    return OptunaSearch(
        space=cells,
        metric=metric,
        mode=mode,
        sampler=CellGridSampler({"cell": list(range(len(cells.rows)))}, seed=seed),
        **study,
    )


class DefineByRunSpace:
    """The conditional space, define-by-run: a size's choices depend on the family, the
    layer selections on the size (OPT-125m has 12 layers, OPT-66b 64), the rest on the
    control. Choices come from the validated plan, so the search never leaves it.
    A class, not a closure: Tune pickles the searcher with its experiment state."""

    def __init__(self, plan: list[TrialSpec], search_hparams: bool) -> None:
        self.cells: dict = {}
        self.keys = {(t.control, t.family, t.size, t.layer_label, t.task, t.seed): t.key
                     for t in plan}
        for t in plan:
            sizes = self.cells.setdefault(t.control, {}).setdefault(t.family, {})
            labels = sizes.setdefault(t.size, [])
            if t.layer_label not in labels:
                labels.append(t.layer_label)
        self.tasks = sorted({t.task for t in plan})
        self.seeds = sorted({t.seed for t in plan})
        self.search_hparams = search_hparams

    def __call__(self, trial) -> dict[str, object]:
        control = trial.suggest_categorical("control", sorted(self.cells))
        by_family = self.cells[control]
        family = trial.suggest_categorical(f"family|{control}", sorted(by_family))
        size = trial.suggest_categorical(f"size|{control}|{family}", sorted(by_family[family]))
        labels = by_family[family][size]
        layers = trial.suggest_categorical(f"layers|{control}|{family}|{size}", labels)
        out = {"control": control, "family": family, "size": size, "layers": layers,
               "task": trial.suggest_categorical("task", self.tasks),
               "seed": trial.suggest_categorical("seed", self.seeds)}
        key = self.keys.get((control, family, size, layers, out["task"], out["seed"]))
        if key is not None:  # a combination that is a plan row
            out["cell_key"] = key
        if self.search_hparams:
            out.update(suggest_hparams(trial))
        return out


def make_searcher(
    plan: list[TrialSpec], *, search: str, sampler: str, metric: str, mode: str,
    study_path: Path | None, study_name: str, search_hparams: str | None = None,
    seed: int = 0,
) -> OptunaSearch:
    """The Optuna study is journaled next to the Ray results, so a resumed sweep continues it.

    ``search_hparams``: None (the spec's values), ``joint`` (with ``--search optuna``: the
    hyperparameters are more axes of the one search) or ``per-cell`` (with ``--search grid``:
    every row gets a search of its own; ``trial_count`` sets how many trials that makes)."""
    study = {"study_name": study_name}
    if study_path is not None:
        study_path.parent.mkdir(parents=True, exist_ok=True)
        study["storage"] = JournalStorage(JournalFileBackend(str(study_path)))
    if search == "grid" and search_hparams == "per-cell":
        return OptunaSearch(space=PerCellHparams(plan), metric=metric,
                            mode=mode, sampler=SAMPLERS[sampler](seed=seed), **study)
    if search == "grid":
        return optuna_exhaustive(plan, metric, mode, seed, **study)
    return OptunaSearch(
        space=DefineByRunSpace(plan, search_hparams == "joint"),
        metric=metric,
        mode=mode,
        sampler=SAMPLERS[sampler](seed=seed),
        **study,
    )


def trial_count(plan: list[TrialSpec], search: str, num_samples: int | None,
                search_hparams: str | None, samples_per_cell: int) -> int:
    if search == "grid":
        return len(plan) * (samples_per_cell if search_hparams == "per-cell" else 1)
    return num_samples or len(plan)


def make_scheduler(name: str, metric: str, mode: str, epochs: int):
    if name == "asha":  # stops weak trials on the per-epoch validation metric
        return ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=epochs,
                             grace_period=max(1, epochs // 4), reduction_factor=2)
    return None


def run_sweep(
    spec: SweepSpec,
    plan: list[TrialSpec],
    *,
    identities: dict[tuple[str, str], str],
    tracking_uri: str,
    experiment: str,
    storage: str,
    address: str | None = None,
    weights_dir: str | None = None,
    data_dir: str | None = None,
    quiet: bool = False,
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
) -> SweepOutcome:
    start = time.time()
    _start_ray(address, quiet)
    try:
        task = get_task(plan[0].task)
        client = MlflowClient(tracking_uri)
        parent = start_parent_run(client, experiment, spec, len(plan))
        logger = MlflowTrialLogger(tracking_uri, experiment, parent, identities)
        gpu_bytes = gpu_memory_bytes(gpu_memory_gb)
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, weights_dir=weights_dir, data_dir=data_dir),
            per_trial_resources(ray.cluster_resources().get("GPU", 0), gpus_per_trial, gpu_bytes),
        )
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
                max_concurrent_trials=max_concurrent,
                reuse_actors=True,  # a new worker re-imports torch/transformers: ~10 s a trial
                trial_dirname_creator=lambda t: f"{run_name(TrialSpec.from_config(t.config))}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                callbacks=[logger] if quiet else [logger, ProgressLine(
                    total, task.metric, task.mode)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
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
            }))
        client.set_tag(parent, "ray.experiment_path", str(path))
        return _fit(tuner, tracking_uri, experiment, parent, str(path), start)
    finally:
        ray.shutdown()


def resume_sweep(path: str | Path, *, address: str | None = None, quiet: bool = False) -> SweepOutcome:
    """Continue an interrupted sweep (Ray Tune's experiment restore): finished trials are not
    rerun, unfinished ones restart from their last epoch checkpoint, errored ones are retried;
    their MLflow runs are the same runs (the logger's trial -> run map is Tune callback state)."""
    start = time.time()
    meta = json.loads((Path(path) / SWEEP_FILE).read_text())
    _start_ray(address, quiet)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, weights_dir=meta["weights_dir"],
                                 data_dir=meta.get("data_dir")),
            per_trial_resources(ray.cluster_resources().get("GPU", 0), meta["gpus_per_trial"],
                                meta["gpu_memory_bytes"]),
        )
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


def _start_ray(address: str | None, quiet: bool) -> None:
    # Per-epoch checkpoints of a seconds-long epoch trip Tune's snapshot-frequency warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
             configure_logging=not quiet)
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
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}'",
                              max_results=50_000)
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "orphaned", "its driver died; the cell ran again")
            client.set_terminated(run.info.run_id, "KILLED")
    statuses = [r.info.status for r in runs]
    return statuses.count("FINISHED"), statuses.count("FAILED")


def _hparams(trial: TrialSpec) -> dict[str, object]:
    return {k: v for k, v in trial.to_config().items() if k not in AXES}
