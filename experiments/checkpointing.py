"""A trial's checkpoint on disk: only what training changes.

The trainable weights as safetensors, the optimizer state with ``torch.save`` (read back
with ``weights_only=True``: no arbitrary pickle), and the progress counters (and float16's
loss scale) as JSON. The frozen block is not saved: it is re-read from its source on
restore and its hash recorded on the run identifies it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from experiments.training import TrainState

MODEL_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
PROGRESS_FILE = "progress.json"


def save_state(directory: str | Path, state: TrainState) -> None:
    directory = Path(directory)
    save_file({k: v.contiguous() for k, v in state.model.items()}, str(directory / MODEL_FILE))
    torch.save(state.optimizer, directory / OPTIMIZER_FILE)
    (directory / PROGRESS_FILE).write_text(
        json.dumps({"epoch": state.epoch, "best": state.best, "scaler": state.scaler}))


def load_state(directory: str | Path) -> TrainState:
    directory = Path(directory)
    progress = json.loads((directory / PROGRESS_FILE).read_text())
    return TrainState(
        epoch=progress["epoch"],
        best=progress["best"],
        scaler=progress.get("scaler"),  # float16's loss scale (absent before it existed)
        model=load_file(str(directory / MODEL_FILE)),
        optimizer=torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True),
    )
