"""Data-parallel trials through Ray (``orchestrator/data_parallel.py``): a 2-worker gloo trial
end to end through the CLI, one of its workers killed mid-trial, resumed by Tune's retry from
Train's checkpoint and finished once, with the losses one process accumulating 2 micro-batches
has; and a trial Tune stops frees its workers for the next one."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from experiments.trial import Hyperparameters

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


def typed(params: dict[str, str]) -> dict[str, object]:
    """An MLflow run's params (strings) as the trial's hyperparameters' types."""
    kinds = {f.name: f.type for f in dataclasses.fields(Hyperparameters)}
    cast = {"int": int, "float": float, "bool": lambda v: v == "True", "str": str}
    return {k: cast[kinds[k]](v) if kinds.get(k) in cast else v for k, v in params.items()}


def _kill_a_worker_after_the_first_checkpoint(proc: subprocess.Popen, storage: Path,
                                               killed: list[int]) -> None:
    """SIGKILL one Ray Train worker of this sweep (a descendant of its driver: the local Ray
    it started) once the trial's first checkpoint is on disk."""
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if any(storage.glob("*/train/*/checkpoint_*")):
            break
        time.sleep(0.1)
    else:
        return
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()[:1]):
                child.kill()
                killed.append(child.pid)
                return
        except psutil.NoSuchProcess:
            continue


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_two_worker_trial_through_the_cli_survives_a_killed_worker(tmp_path):
    from experiments.training import run_trial
    from experiments.trial import TrialSpec

    storage = tmp_path / "ray"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "sweep.py"), "--tasks", "digits", "--controls", "pretrained",
         "--layers", "5", "--seeds", "0", "--epochs", str(EPOCHS), "--gpus-per-trial", "2",
         "--quiet", "--tracking-uri", uri, "--storage", str(storage), "--experiment", "dp"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_the_first_checkpoint,
                              args=(proc, storage, killed))
    killer.start()
    out, err = proc.communicate(timeout=800)
    killer.join()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert killed, "no Ray Train worker was found to kill"

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("dp")
    [run] = client.search_runs([exp.experiment_id], "tags.`lmblocks.tune_trial_id` != ''")
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["data_parallel"] == "2" and tags["retries"] == "1"  # Tune retried it once
    assert (tags["global_batch"], tags["micro_batch_size"], tags["accum_steps"]) == (
        "32", "16", "1")
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))  # each epoch once

    # one process, the trial's global batch of 32 as 2 micro-batches of 16: the same losses
    trial = TrialSpec.from_config({**typed(run.data.params), "micro_batch": "16"})
    assert (trial.hparams.epochs, trial.hparams.batch_size) == (EPOCHS, 32)
    losses: list[float] = []
    run_trial(trial, lambda m, s: losses.append(m["train_loss"]), cpus=1)
    by_epoch = {m.step: m.value for m in history}
    for epoch, loss in enumerate(losses, 1):
        assert by_epoch[epoch] == pytest.approx(loss, rel=1e-5, abs=1e-5)


def _ticker(config: dict) -> None:
    """A Train worker that reports an epoch a second, for 30."""
    import ray.train

    for epoch in range(1, 31):
        time.sleep(1)
        ray.train.report({"epoch": epoch})


def _driver(config: dict) -> None:
    import ray.train
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.util.queue import Queue

    from orchestrator.data_parallel import ControllerHandle, fit_tracked, trainer_class

    handles = Queue(maxsize=1, actor_options={"num_cpus": 0})
    storage = tune.get_context().get_storage()
    trainer = trainer_class(cleaner=False)(
        _ticker, scaling_config=ray.train.ScalingConfig(num_workers=2,
                                                        resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(
            name=storage.trial_dir_name, storage_path=f"{storage.experiment_fs_path}/train",
            storage_filesystem=storage.storage_filesystem,
            # a worker group that cannot start fails the trial (not retried for ever)
            failure_config=ray.train.FailureConfig(controller_failure_limit=0),
            callbacks=[TuneReportCallback(), ControllerHandle(handles)]))
    fit_tracked(trainer, handles)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_trial_tune_stops_frees_its_workers_for_the_next(tmp_path):
    """Two trials, one at a time, each stopped by Tune at its second epoch: the second gets
    the cluster's two CPUs only if the first's Train run let them go (without ``stoppable``'s
    abort, its placement group stays and the second fails on Train's 60 s start-up timeout)."""
    import ray
    from ray import tune

    from orchestrator.data_parallel import stoppable

    # the workers import this module, as pytest did: from tests/ (and the repository)
    path = f"{ROOT / 'tests'}:{ROOT}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        results = tune.Tuner(
            tune.with_resources(stoppable(_driver),
                                tune.PlacementGroupFactory([{"memory": 2**28}])),
            param_space={"x": tune.grid_search([1, 2])},
            tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=False),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="stops", verbose=0,
                                      stop={"epoch": 2}),
        ).fit()
    finally:
        ray.shutdown()
    assert [r.error for r in results] == [None, None]
    assert [r.metrics["epoch"] for r in results] == [2, 2]
