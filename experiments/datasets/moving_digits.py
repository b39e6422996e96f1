"""Moving digits (embedded): only motion tells the class.

A scikit-learn digit moves one pixel a frame in one of 8 directions across a 16x16 canvas
that wraps around, from a uniformly random start. Any single frame is a digit at a uniformly
random place, so a model that ignores time is at chance (1/8); the label is the direction.
Clips are (1, 8, 16, 16), from fixed seeds (train and validation are different draws).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

DIRECTIONS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
FRAMES, CANVAS = 8, 16


def make_moving_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, FRAMES, CANVAS, CANVAS) clips in [0, 1] and (n,) direction labels."""
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0
    rng = np.random.default_rng(seed)
    clips = np.zeros((n, 1, FRAMES, CANVAS, CANVAS), np.float32)
    labels = rng.integers(0, len(DIRECTIONS), n)
    for i in range(n):
        canvas = np.zeros((CANVAS, CANVAS), np.float32)
        canvas[:8, :8] = images[rng.integers(len(images))]
        y0, x0 = rng.integers(0, CANVAS, 2)
        dy, dx = DIRECTIONS[labels[i]]
        for t in range(FRAMES):
            clips[i, 0, t] = np.roll(canvas, (y0 + dy * t, x0 + dx * t), axis=(0, 1))
    return torch.from_numpy(clips), torch.from_numpy(labels)


@cache
def _moving_digits() -> tuple[TensorDataset, TensorDataset]:
    return TensorDataset(*make_moving_digits(1600, seed=1)), TensorDataset(*make_moving_digits(400, seed=2))


def build_moving_digits(data_dir: str | Path | None = None) -> tuple[TensorDataset, TensorDataset]:
    return _moving_digits()
