"""The Ray Tune function trainable: one plan row, checkpointed every epoch.

A checkpoint holds only what training changes: the trainable weights (safetensors), the
optimizer state (``torch.save``, read back with ``weights_only=True``) and the epoch count.
The frozen block is re-read from its source on restore and verified by its hash on the run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune
from safetensors.torch import load_file, save_file

from experiments.training import TrainState, run_trial
from orchestrator.plan import TrialSpec

MODEL_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
PROGRESS_FILE = "progress.json"


def save_state(directory: str | Path, state: TrainState) -> None:
    directory = Path(directory)
    save_file({k: v.contiguous() for k, v in state.model.items()}, str(directory / MODEL_FILE))
    torch.save(state.optimizer, directory / OPTIMIZER_FILE)
    (directory / PROGRESS_FILE).write_text(json.dumps({"epoch": state.epoch, "best": state.best}))


def load_state(directory: str | Path) -> TrainState:
    directory = Path(directory)
    progress = json.loads((directory / PROGRESS_FILE).read_text())
    return TrainState(
        epoch=progress["epoch"],
        best=progress["best"],
        model=load_file(str(directory / MODEL_FILE)),
        optimizer=torch.load(directory / OPTIMIZER_FILE, weights_only=True),
    )


def tune_trial(config: dict, *, weights_dir: str | None = None) -> None:
    trial = TrialSpec.from_config(config)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES

    restore = None
    if checkpoint := tune.get_checkpoint():
        with checkpoint.as_directory() as d:
            restore = load_state(d)

    def report(metrics: dict, state: TrainState) -> None:
        with tempfile.TemporaryDirectory() as d:
            save_state(d, state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    run_trial(trial, report, weights_dir=weights_dir, restore=restore, device=device)
