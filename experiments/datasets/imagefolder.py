"""ImageNet-style ``ImageFolder`` trees (``train/`` and ``val/``, one folder per class) at 224,
from ``--data-dir``, with timm's DeiT training transform (random resized crop, flip,
RandAugment m9, random erasing 0.25) and the standard resize + centre crop for validation."""

from __future__ import annotations

from pathlib import Path

from experiments.datasets.base import DataError

IMAGENET_CLASSES = 1000
FOLDER_LAYOUT = "train/<class>/*.jpeg and val/<class>/*.jpeg (ImageFolder, at most 1000 classes)"


def imagefolder_check(data_dir: str | Path | None) -> None:
    if data_dir is None:
        raise DataError(f"ImageFolder tasks need --data-dir: a folder holding {FOLDER_LAYOUT}")
    root = Path(data_dir)
    for split in ("train", "val"):
        d = root / split
        if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
            raise DataError(f"--data-dir {str(data_dir)!r}: no class folders in {split}/; "
                            f"expected {FOLDER_LAYOUT}")
    n = sum(p.is_dir() for p in (root / "train").iterdir())
    if n > IMAGENET_CLASSES:
        raise DataError(f"--data-dir {str(data_dir)!r}: {n} classes; valid: at most 1000")


def imagefolder_data(data_dir: str | Path | None = None):
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    imagefolder_check(data_dir)
    root = Path(data_dir)
    train_tf = create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                                re_prob=0.25, interpolation="bicubic")
    val_tf = create_transform(224, is_training=False, interpolation="bicubic", crop_pct=0.875)
    train = ImageFolder(str(root / "train"), transform=train_tf)
    val = ImageFolder(str(root / "val"), transform=val_tf)
    if val.class_to_idx != train.class_to_idx:
        raise DataError(f"--data-dir {str(data_dir)!r}: train/ and val/ name different classes")
    return train, val
