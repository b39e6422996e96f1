"""What every dataset module shares: the error for data that is not where it was said to be,
the ``--data-dir`` check, and an in-memory dataset of multi-part inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """A task's data is not where it was said to be; the message names the expected layout."""


def data_root(task: str, data_dir: str | Path | None, layout: str) -> Path:
    """``--data-dir`` as a folder, or DataError saying what the task expects there."""
    if data_dir is None:
        raise DataError(f"task {task!r} needs --data-dir: a folder holding {layout}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"--data-dir {str(data_dir)!r} is not a directory; task {task!r} "
                        f"expects {layout}")
    return root


class InputsDataset(Dataset):
    """In-memory samples ``((input_1, ..., input_k), target)`` from aligned tensors."""

    def __init__(self, inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> None:
        if any(len(t) != len(target) for t in inputs):
            raise ValueError(f"inputs of lengths {[len(t) for t in inputs]} for "
                             f"{len(target)} targets")
        self.inputs, self.target = inputs, target

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return tuple(t[i] for t in self.inputs), self.target[i]
