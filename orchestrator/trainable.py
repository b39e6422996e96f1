"""The Ray Tune function trainable: one plan row, checkpointed every epoch through Tune."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence

import ray
import torch
from ray import tune

from experiments.checkpointing import load_state, save_state
from experiments.training import TrainState, run_trial
from experiments.trial import TrialSpec
from orchestrator.data_parallel import fit_data_parallel
from orchestrator.plugins import LoadedPlugin, import_on_worker
from orchestrator.worker_exit import exit_quietly_on_sigterm


def tune_trial(config: dict, *, weights_dir: str | None = None,
               data_dir: str | None = None, peak_tflops: float | None = None,
               plugins: Sequence[LoadedPlugin] = (), workers: int = 1,
               cpus_per_worker: int = 1, use_gpu: bool = False) -> None:
    """One trial: here, or (``workers`` > 1) data-parallel on that many Ray Train workers of
    ``cpus_per_worker`` CPUs and (``use_gpu``) one GPU each (``orchestrator.data_parallel``)."""
    exit_quietly_on_sigterm()
    if workers > 1:
        fit_data_parallel(config, workers, weights_dir=weights_dir, data_dir=data_dir,
                          peak_tflops=peak_tflops, plugins=plugins,
                          cpus_per_worker=cpus_per_worker, use_gpu=use_gpu)
        return
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
