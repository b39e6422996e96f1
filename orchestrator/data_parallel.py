"""An N-GPU trial: Ray Train's ``TorchTrainer`` launched from the Tune trial, Ray's documented
way to tune distributed runs (Train V2: a Tune function trainable that calls ``fit``).

The Tune trial holds no GPU; it starts Train's controller, which places N workers (one GPU
each, or CPUs with gloo on a cluster without GPUs) and the process group. Each worker runs
``experiments.training.run_trial`` as a rank of ``experiments.parallel``; rank 0's reports
reach Tune (``TuneReportCallback``), so the sweep's MLflow logger, progress line, ASHA and
plateau stopper see one trial, as for a 1-GPU one.

Checkpoints are Train's: rank 0 reports one each epoch into the Train run's own directory,
named after the Tune trial (``<experiment>/train/<trial dir>``). A failed worker fails the
Train run, then the Tune trial, and Tune retries it (``--max-failures``, as any trial: its
run is tagged with the retry and its reason); the retried trial's ``TorchTrainer`` has the
same name and storage, and Train restores it from its latest checkpoint. ``--resume`` does
the same for the trials a killed sweep left unfinished.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from queue import Empty

import ray
import torch
from ray.train.v2._internal.execution.callback import ControllerCallback

from experiments.checkpointing import load_state, save_state
from experiments.parallel import DataParallel
from experiments.training import TrainState, run_trial
from experiments.trial import TrialSpec
from orchestrator.plugins import LoadedPlugin, import_on_worker
from orchestrator.worker_exit import exit_quietly_on_sigterm

TRAIN_DIR = "train"  # beside the Tune trials' directories: the Train runs' checkpoints
QUIET_LOGGERS = ("ray.train", "ray.tune", "ray.train._internal.storage")


def train_worker(config: dict) -> None:
    """One rank of the trial (Ray Train's ``train_loop_per_worker``)."""
    import ray.train
    import ray.train.torch

    exit_quietly_on_sigterm()
    for name in QUIET_LOGGERS:  # Train's per-report INFO lines drown the progress line
        logging.getLogger(name).setLevel(logging.WARNING)
    context = ray.train.get_context()
    node = ray.get_runtime_context().get_node_id()
    import_on_worker(config["plugins"], f"{ray.util.get_node_ip_address()} ({node})")
    torch.set_num_threads(config["cpus"])
    parallel = DataParallel(context.get_world_rank(), context.get_world_size())
    restore = None
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as d:
            restore = load_state(d)

    def report(metrics: dict, state: TrainState | None) -> None:
        if state is None:  # not rank 0: Train's report is a barrier every rank reaches
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save_state(d, state)
            ray.train.report({**metrics, "node_id": node},
                             checkpoint=ray.train.Checkpoint.from_directory(d))

    run_trial(TrialSpec.from_config(config["trial"]), report,
              weights_dir=config["weights_dir"], data_dir=config["data_dir"], restore=restore,
              device=ray.train.torch.get_device(), cpus=config["cpus"],
              peak_tflops=config["peak_tflops"], parallel=parallel)


def fit_data_parallel(config: dict, workers: int, *, weights_dir: str | None,
                      data_dir: str | None, peak_tflops: float | None,
                      plugins: Sequence[LoadedPlugin], cpus_per_worker: int,
                      use_gpu: bool) -> None:
    """Run the Tune trial ``config`` on ``workers`` Train workers; returns when it is done."""
    import ray.train
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.util.queue import Queue

    storage = tune.get_context().get_storage()
    handles = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = trainer_class(state_api_available())(
        train_worker,
        train_loop_config={"trial": config, "weights_dir": weights_dir, "data_dir": data_dir,
                           "peak_tflops": peak_tflops, "plugins": tuple(plugins),
                           "cpus": cpus_per_worker},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            # the Tune trial's directory name: the same on a retry and on --resume, so that
            # Train finds its run again and restores its latest checkpoint
            name=storage.trial_dir_name,
            storage_path=f"{storage.experiment_fs_path}/{TRAIN_DIR}",
            storage_filesystem=storage.storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=0),  # Tune retries the trial
            callbacks=[TuneReportCallback(), ControllerHandle(handles)],
            # Train's INFO lines (each report's whole metrics dict, the process group's set-up)
            # would drown the sweep's progress line; -v shows Ray's own INFO lines elsewhere
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    fit_tracked(trainer, handles)


def state_api_available() -> bool:
    """Whether Ray's state API answers (it needs the dashboard, which a sweep's own Ray runs
    without and ``ray[default]`` installs): Ray Train's placement-group cleaner needs it."""
    from ray.util.state import list_actors

    try:
        list_actors(limit=1, timeout=5, raise_on_missing_output=False)
    except Exception:  # noqa: BLE001  (any failure: no state API to rely on)
        return False
    return True


def trainer_class(cleaner: bool):
    """TorchTrainer, without Ray Train's placement-group cleaner when ``cleaner`` is False.

    The cleaner is a detached actor that frees a Train run's placement group when the run's
    controller dies without doing it; it asks the state API every second whether the
    controller lives, and without the API it warns on the console every second and frees
    nothing. ``stoppable`` aborts the controller (which frees the group) when Tune
    stops a trial; a controller killed outright still leaves its group to the cleaner,
    where there is one."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    if cleaner:
        return TorchTrainer

    class WithoutCleaner(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, PlacementGroupCleanerCallback)]

    return WithoutCleaner


class ControllerHandle(ControllerCallback):
    """Sends the Train controller's own actor handle to the Tune trial that started it (an
    internal Train hook: Ray's public ``UserCallback`` runs only on reports)."""

    def __init__(self, handles) -> None:
        self.handles = handles  # a ray.util.queue.Queue the Tune trial reads

    def after_controller_start(self, train_run_context) -> None:
        self.handles.put(ray.get_runtime_context().current_actor)


# This process's running Train run (a Tune trial's actor runs one trial at a time): the
# queue its controller sends its handle through, for ``abort_running`` to stop it.
_RUNNING: dict[str, object] = {}


def fit_tracked(trainer, handles) -> None:
    """``trainer.fit()``, abortable from this process while it runs (``abort_running``); an
    abort's own error (the controller ending under ``fit``) is not the trial's failure."""
    _RUNNING.clear()
    _RUNNING["handles"] = handles
    try:
        trainer.fit()
    except Exception:
        if _RUNNING.get("aborted"):
            return
        raise
    finally:
        _RUNNING.pop("handles", None)


def abort_running(wait_s: float = 60) -> None:
    """Abort the Train run this process is running, if any: its controller stops its workers
    and frees their placement group."""
    handles = _RUNNING.pop("handles", None)
    if handles is None:
        return
    _RUNNING["aborted"] = True
    try:
        controller = handles.get(timeout=wait_s)  # type: ignore[attr-defined]
        ray.get(controller.abort.remote(), timeout=wait_s)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, Empty):
        pass  # abort ends the controller's process: the expected way


def stoppable(trainable):
    """Tune's trainable for ``trainable`` (a function), whose ``cleanup`` (Tune stopping the
    trial: ASHA, the plateau stopper) aborts the Train run it started.

    Tune ends a stopped trial's actor right after ``cleanup``; a Train run's controller ends
    with it, but its workers' placement group stays reserved (Ray Train's cleaner of it asks
    the dashboard's state API, which a sweep's own Ray runs without), and the next trial
    would wait for those GPUs forever. Aborting first frees them."""
    from ray.tune.trainable.function_trainable import wrap_function

    base = wrap_function(trainable)

    class StoppableTrial(base):  # type: ignore[misc, valid-type]
        def cleanup(self) -> None:
            abort_running()
            super().cleanup()

    return StoppableTrial
