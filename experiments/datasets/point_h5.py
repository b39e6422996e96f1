"""ModelNet40 and ScanObjectNN point clouds from ``--data-dir``, in their common h5 layouts.

Clouds are centred and scaled into the unit sphere; the fourth channel is the object flag
(ScanObjectNN's ``mask`` marks background points; ModelNet has none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from experiments.datasets.base import DataError, data_root

POINTS = 1024  # per cloud, as Point-BERT reads ModelNet40
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


def build_real(task: str, points: int = POINTS):
    def build(data_dir: str | Path | None = None) -> tuple[TensorDataset, TensorDataset]:
        return (read_h5(h5_files(task, data_dir, "train"), points),
                read_h5(h5_files(task, data_dir, "val"), points))

    def check(data_dir: str | Path | None) -> None:
        h5_files(task, data_dir, "train")
        h5_files(task, data_dir, "val")

    return build, check
