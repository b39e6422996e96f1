"""Image classification on scikit-learn's digits: 1,797 real 8x8 grey images, bundled offline.

A fixed, seeded 80/20 stratified split (independent of the trial seed, so every trial of a
sweep is scored on the same validation images).
"""

from __future__ import annotations

from functools import cache

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

from encoders.vit import insert_after_last_block, small_vit
from experiments.tasks.registry import Task, register_task

SPLIT_SEED = 0
EMBED_DIM = 64


@cache
def _split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_val = train_test_split(
        range(len(y)), test_size=0.2, random_state=SPLIT_SEED, stratify=digits.target
    )
    return x[idx_train], y[idx_train], x[idx_val], y[idx_val]


def build_data(data_dir: str | None = None) -> tuple[TensorDataset, TensorDataset]:
    """Bundled with scikit-learn: ``data_dir`` is not used."""
    x_tr, y_tr, x_va, y_va = _split()
    return TensorDataset(x_tr, y_tr), TensorDataset(x_va, y_va)


PATCH = 2
INK = 0.25  # a patch with a pixel above a quarter of full intensity holds part of the digit


def ink_patches(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, 8, 8) -> (B, 16) bool, in timm's row-major patch order."""
    b, _, h, w = x.shape
    patches = x.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH).amax(dim=(2, 4))
    return (patches > INK).reshape(b, -1)


def build_model(block: nn.Module | None) -> nn.Module:
    vit = small_vit(img_size=8, in_chans=1, num_classes=10, embed_dim=EMBED_DIM,
                    patch_size=PATCH)
    return insert_after_last_block(vit, block)


DIGITS = register_task(
    Task(
        name="digits",
        description="scikit-learn digits (8x8), timm ViT, classification from the class token",
        visual_dim=EMBED_DIM,
        build_data=build_data,
        build_model=build_model,
        informative_tokens=ink_patches,
        chance=0.1,
        num_classes=10,
    )
)
