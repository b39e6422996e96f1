"""CIFAR-10/100 in torchvision's on-disk format, from ``--data-dir``.

Augmentation is part of the dataset's recipe: random crop with 4-pixel padding and horizontal
flips for training. The python batches are pickles; they are read with an unpickler that only
admits the numpy array reconstructors such a batch holds, never arbitrary code.
"""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from experiments.datasets.base import DataError, data_root

CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels", 100),
}
_NUMPY_OK = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
             ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_OK:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a CIFAR batch")


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = _ArraysOnly(f, encoding="bytes").load()
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(batch[label_key], dtype=np.int64)


class CifarSet(Dataset):
    """uint8 images held in memory; normalised, and augmented when ``train``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool) -> None:
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.train = train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float() / 255
        if self.train:  # random 32x32 crop of the 4-padded image, random horizontal flip
            x = nn.functional.pad(x, (4, 4, 4, 4))
            dy, dx = torch.randint(0, 9, (2,)).tolist()
            x = x[:, dy:dy + 32, dx:dx + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x - CIFAR_MEAN) / CIFAR_STD, self.labels[i]


def cifar_files(task: str, data_dir: str | Path | None) -> tuple[list[Path], Path]:
    folder, train_names, test_name, _, _ = CIFAR[task]
    layout = (f"{folder}/ with {', '.join(train_names[:2])}{', ...' if len(train_names) > 2 else ''}"
              f" and {test_name} (torchvision's CIFAR format)")
    root = data_root(task, data_dir, layout)
    base = root / folder if (root / folder).is_dir() else root
    files = [base / n for n in train_names]
    missing = [f.name for f in [*files, base / test_name] if not f.is_file()]
    if missing:
        raise DataError(f"--data-dir {str(data_dir)!r}: missing {', '.join(missing)} for task "
                        f"{task!r}; expected {layout}")
    return files, base / test_name


@cache
def _cifar(task: str, data_dir: str) -> tuple[CifarSet, CifarSet]:
    train_files, test_file = cifar_files(task, data_dir)
    label_key = CIFAR[task][3]
    parts = [read_cifar_batch(f, label_key) for f in train_files]
    x_te, y_te = read_cifar_batch(test_file, label_key)
    return (CifarSet(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                     train=True), CifarSet(x_te, y_te, train=False))


def build_cifar(task: str, data_dir: str | Path | None = None) -> tuple[CifarSet, CifarSet]:
    """``task`` is a ``CIFAR`` key; the sets are read once per folder."""
    return _cifar(task, str(data_dir))


def check_cifar(task: str, data_dir: str | Path | None) -> None:
    cifar_files(task, data_dir)
