"""The Ray Tune function trainable: one plan row, checkpointed every epoch through Tune."""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Sequence

import ray
import torch
from ray import tune

from experiments.checkpointing import load_state, save_state
from experiments.training import TrainState, run_trial
from experiments.trial import TrialSpec
from orchestrator.plugins import LoadedPlugin, import_on_worker


def exit_quietly_on_sigterm() -> None:
    """Ray's worker turns SIGTERM (its actor stopped by Tune, or Ray shutting down) into
    ``SystemExit``. When the signal lands inside a weakref callback or a ``__del__``, Python
    cannot raise it there and prints "Exception ignored in ..." with a traceback, which Ray
    forwards to the sweep's console: noise from a process that is exiting as it was asked to
    (seen in CI as a smoke sweep's stray stderr). Only that case is dropped; every other
    unraisable error is printed as before, by the hook that was in place."""
    previous = sys.unraisablehook
    if getattr(previous, "_lmblocks_quiet_exit", False):
        return  # the actor is reused for another trial: installed once

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        previous(unraisable)

    hook._lmblocks_quiet_exit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def tune_trial(config: dict, *, weights_dir: str | None = None,
               data_dir: str | None = None, peak_tflops: float | None = None,
               plugins: Sequence[LoadedPlugin] = ()) -> None:
    exit_quietly_on_sigterm()
    # First the plugins the driver loaded: the trial's task, LM family or control may be theirs.
    context = ray.get_runtime_context()
    import_on_worker(plugins, f"{ray.util.get_node_ip_address()} ({context.get_node_id()})")
    trial = TrialSpec.from_config(config)
    # one "Checkpoint successfully created" INFO line per epoch per trial drowns the progress line
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    assigned = ray.get_runtime_context().get_assigned_resources()
    cpus = max(1, int(assigned.get("CPU", 1)))
    torch.set_num_threads(cpus)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES

    restore = None
    if checkpoint := tune.get_checkpoint():
        with checkpoint.as_directory() as d:
            restore = load_state(d)

    node = ray.get_runtime_context().get_node_id()  # which machine of the cluster ran it

    def report(metrics: dict, state: TrainState) -> None:
        with tempfile.TemporaryDirectory() as d:
            save_state(d, state)
            tune.report({**metrics, "node_id": node},
                        checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(trial, report, weights_dir=weights_dir, data_dir=data_dir, restore=restore,
              device=device, cpus=cpus, peak_tflops=peak_tflops,
              gpu_share=min(1.0, assigned.get("GPU", 1.0) or 1.0))
