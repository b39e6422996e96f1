"""Point-cloud classification: procedurally generated shapes (embedded), ModelNet40 and
ScanObjectNN (their common h5 layouts, from ``--data-dir``).

Every cloud is (N, 4): x, y, z and an object flag (1 on the object, 0 on clutter or
background). The encoder reads only x, y, z; the flag tells the information-filtering probe
which tokens are informative (a patch whose centre lies on the object).

The embedded default: six primitive classes (sphere, cube, cylinder, cone, torus, pyramid),
each under a random rotation, anisotropic scale, surface noise and object point count, with
a floor of background points under it filling the rest of the cloud; generated from fixed seeds (train and
validation are different draws), so every trial sees the same data.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from encoders.point_encoder import PointTransformer, farthest_point_sample
from encoders.vit import insert_after_last_block
from experiments.tasks.registry import DataError, Task, data_root, register_task

POINTS = 256
GROUPS = 16
K = 16
EMBED_DIM = 64
SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")


def _surface(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points on the unit-sized surface of a primitive."""
    u, v = rng.random(n), rng.random(n)
    if shape == "sphere":
        z = 2 * u - 1
        r = np.sqrt(1 - z**2)
        return np.stack([r * np.cos(2 * np.pi * v), r * np.sin(2 * np.pi * v), z], 1)
    if shape == "cube":
        p = rng.uniform(-1, 1, (n, 3))
        face = rng.integers(0, 3, n)
        p[np.arange(n), face] = rng.choice([-1.0, 1.0], n)
        return p * 0.8
    if shape == "cylinder":
        t = 2 * np.pi * u
        return np.stack([0.7 * np.cos(t), 0.7 * np.sin(t), 2 * v - 1], 1)
    if shape == "cone":
        h = np.sqrt(v)  # uniform over the lateral surface
        t = 2 * np.pi * u
        return np.stack([0.8 * h * np.cos(t), 0.8 * h * np.sin(t), 1 - 2 * h], 1)
    if shape == "torus":
        a, b = 2 * np.pi * u, 2 * np.pi * v
        return np.stack([(0.7 + 0.3 * np.cos(b)) * np.cos(a),
                         (0.7 + 0.3 * np.cos(b)) * np.sin(a), 0.3 * np.sin(b)], 1)
    if shape == "pyramid":  # four triangular faces over a square base, apex up
        s, t = rng.random(n), rng.random(n)
        flip = s + t > 1
        s[flip], t[flip] = 1 - s[flip], 1 - t[flip]
        corners = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]], float) * 0.8
        apex = np.array([0, 0, 1.0])
        face = rng.integers(0, 4, n)
        a, b = corners[face], corners[(face + 1) % 4]
        return a + s[:, None] * (b - a) + t[:, None] * (apex - a)
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def make_shapes(per_class: int, seed: int, points: int = POINTS,
                clutter: tuple[float, float] = (0.1, 0.3)) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, points, 4) clouds (xyz + object flag, shuffled) and (M,) labels."""
    rng = np.random.default_rng(seed)
    clouds, labels = [], []
    for label, shape in enumerate(SHAPES):
        for _ in range(per_class):
            n_obj = int(points * (1 - rng.uniform(*clutter)))
            obj = _surface(shape, n_obj, rng) * rng.uniform(0.75, 1.25, 3)
            obj = obj @ _rotation(rng).T + rng.normal(0, 0.02, obj.shape)
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


# --- real data: h5 layouts -------------------------------------------------------------

MODELNET_LAYOUT = ("modelnet40_ply_hdf5_2048/ with ply_data_train*.h5 and ply_data_test*.h5 "
                   "(datasets 'data' (N, 2048, 3) and 'label')")
SCANOBJECTNN_LAYOUT = ("h5_files/main_split/ (or any folder) with training_objectdataset*.h5 and "
                       "test_objectdataset*.h5 (datasets 'data', 'label', optional 'mask')")


def _find(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    for pattern in patterns:
        if found := sorted(root.glob(pattern)):
            return found
    return []


def h5_files(task: str, data_dir: str | Path | None, split: str) -> list[Path]:
    """The h5 files of a split, or DataError naming the expected layout."""
    layout = MODELNET_LAYOUT if task == "modelnet40" else SCANOBJECTNN_LAYOUT
    root = data_root(task, data_dir, layout)
    if task == "modelnet40":
        name = "train" if split == "train" else "test"
        files = _find(root, (f"ply_data_{name}*.h5", f"modelnet40_ply_hdf5_2048/ply_data_{name}*.h5"))
    else:
        name = "training" if split == "train" else "test"
        files = _find(root, (f"{name}_objectdataset*.h5", f"main_split/{name}_objectdataset*.h5",
                             f"h5_files/main_split/{name}_objectdataset*.h5"))
        files = [f for f in files if "augmented" in f.name] or files  # the hardest variant first
        files = files[:1]
    if not files:
        raise DataError(f"--data-dir {str(data_dir)!r}: no {split} files for task {task!r}; "
                        f"expected {layout}")
    return files


def read_h5(files: list[Path], points: int) -> TensorDataset:
    import h5py

    data, labels, flags = [], [], []
    for f in files:
        with h5py.File(f, "r") as h5:
            xyz = np.asarray(h5["data"][:, :points, :3], dtype=np.float32)
            data.append(xyz)
            labels.append(np.asarray(h5["label"]).reshape(-1).astype(np.int64))
            mask = np.asarray(h5["mask"][:, :points]) if "mask" in h5 else None
            flags.append(np.ones(xyz.shape[:2], np.float32) if mask is None
                         else (mask != -1).astype(np.float32))
    xyz, flag = np.concatenate(data), np.concatenate(flags)
    xyz = xyz - xyz.mean(axis=1, keepdims=True)
    xyz = xyz / np.linalg.norm(xyz, axis=-1).max(axis=1)[:, None, None]  # unit sphere
    cloud = np.concatenate([xyz, flag[..., None]], axis=-1)
    return TensorDataset(torch.from_numpy(cloud), torch.from_numpy(np.concatenate(labels)))


def build_real(task: str, points: int = 1024):
    def build(data_dir: str | Path | None = None) -> tuple[TensorDataset, TensorDataset]:
        return (read_h5(h5_files(task, data_dir, "train"), points),
                read_h5(h5_files(task, data_dir, "val"), points))

    def check(data_dir: str | Path | None) -> None:
        h5_files(task, data_dir, "train")
        h5_files(task, data_dir, "val")

    return build, check


# --- model, probe, registration -----------------------------------------------------


def model_builder(num_classes: int, groups: int):
    def build_model(block: nn.Module | None) -> nn.Module:
        enc = PointTransformer(num_classes=num_classes, groups=groups, k=K, embed_dim=EMBED_DIM)
        return insert_after_last_block(enc, block)

    return build_model


def object_patches(groups: int):
    def informative(clouds: torch.Tensor) -> torch.Tensor:
        """(B, N, 4) -> (B, G): the patch's centre (the encoder's own FPS) is on the object."""
        idx = farthest_point_sample(clouds[..., :3].float(), groups)
        return clouds[torch.arange(len(clouds)).unsqueeze(1), idx, 3] > 0.5

    return informative


SHAPES3D = register_task(Task(
    name="shapes3d",
    description="procedural 3D primitives with clutter (embedded), Point-BERT-style encoder",
    visual_dim=EMBED_DIM,
    build_data=build_shapes,
    build_model=model_builder(len(SHAPES), GROUPS),
    informative_tokens=object_patches(GROUPS),
    chance=1 / len(SHAPES),
    num_classes=len(SHAPES),
))

for _name, _classes in (("modelnet40", 40), ("scanobjectnn", 15)):
    _build, _check = build_real(_name)
    register_task(Task(
        name=_name,
        description=f"{_name} point clouds (h5, 1024 points), Point-BERT-style encoder",
        visual_dim=EMBED_DIM,
        build_data=_build,
        build_model=model_builder(_classes, 64),
        informative_tokens=object_patches(64),
        check_data=_check,
        chance=1 / _classes,
        num_classes=_classes,
    ))

