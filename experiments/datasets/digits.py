"""scikit-learn's digits: 1,797 real 8x8 grey images, bundled offline.

A fixed, seeded 80/20 stratified split (independent of the trial seed, so every trial of a
sweep is scored on the same validation images).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

SPLIT_SEED = 0
CLASSES = 10


@cache
def _split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # imported here: scikit-learn costs ~0.6 s to import, which the sweep's driver (it only
    # plans) and a worker running another task need not pay
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_val = train_test_split(
        range(len(y)), test_size=0.2, random_state=SPLIT_SEED, stratify=digits.target
    )
    return x[idx_train], y[idx_train], x[idx_val], y[idx_val]


def build_digits(data_dir: str | Path | None = None) -> tuple[TensorDataset, TensorDataset]:
    """Bundled with scikit-learn: ``data_dir`` is not used."""
    x_tr, y_tr, x_va, y_va = _split()
    return TensorDataset(x_tr, y_tr), TensorDataset(x_va, y_va)
