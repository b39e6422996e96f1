"""Procedural point-cloud classification (embedded): six primitive classes (sphere, cube,
cylinder, cone, torus, pyramid), each under a random rotation, anisotropic scale, surface
noise and object point count, with a floor of background points under it filling the rest
of the cloud; generated from fixed seeds (train and validation are different draws), so
every trial sees the same data.

Every cloud is (N, 4): x, y, z and an object flag (1 on the object, 0 on the floor).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from experiments.datasets.primitives import PRIMITIVES, rotation, surface

POINTS = 256
SHAPES = PRIMITIVES  # the classes, in label order


def make_shapes(per_class: int, seed: int, points: int = POINTS,
                clutter: tuple[float, float] = (0.1, 0.3)) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, points, 4) clouds (xyz + object flag, shuffled) and (M,) labels."""
    rng = np.random.default_rng(seed)
    clouds, labels = [], []
    for label, shape in enumerate(SHAPES):
        for _ in range(per_class):
            n_obj = int(points * (1 - rng.uniform(*clutter)))
            obj = surface(shape, n_obj, rng) * rng.uniform(0.75, 1.25, 3)
            obj = obj @ rotation(rng).T + rng.normal(0, 0.02, obj.shape)
            # background: a floor under the object, as a scanned object stands on one
            n_bg = points - n_obj
            noise = np.c_[rng.uniform(-1.3, 1.3, (n_bg, 2)),
                          obj[:, 2].min() - 0.05 + rng.normal(0, 0.02, n_bg)]
            cloud = np.concatenate([np.c_[obj, np.ones(n_obj)], np.c_[noise, np.zeros(len(noise))]])
            clouds.append(cloud[rng.permutation(points)])
            labels.append(label)
    return torch.tensor(np.stack(clouds), dtype=torch.float32), torch.tensor(labels)


@cache
def _shapes() -> tuple[TensorDataset, TensorDataset]:
    return (TensorDataset(*make_shapes(150, seed=1)), TensorDataset(*make_shapes(40, seed=2)))


def build_shapes(data_dir: str | Path | None = None) -> tuple[TensorDataset, TensorDataset]:
    return _shapes()
