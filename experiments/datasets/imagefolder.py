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


def posterize(img, bits_to_keep: int, **_):
    """timm's posterize, with 0 bits meaning what it meant before Pillow 11 refused it: every
    bit masked, a black image (TF's shift-right-then-left by 8). RandAugment's increasing
    posterize asks for 0 bits whenever its magnitude draws the maximum (m9, std 0.5 -> 10):
    on ImageNet that is every few hundred images, and the trial died on it."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def keep_zero_bit_posterize(transform) -> None:
    """Point the RandAugment ops of ``transform`` (a torchvision Compose) at ``posterize``."""
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = posterize


def imagefolder_data(data_dir: str | Path | None = None):
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    imagefolder_check(data_dir)
    root = Path(data_dir)
    train_tf = create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                                re_prob=0.25, interpolation="bicubic")
    keep_zero_bit_posterize(train_tf)
    val_tf = create_transform(224, is_training=False, interpolation="bicubic", crop_pct=0.875)
    train = ImageFolder(str(root / "train"), transform=train_tf)
    val = ImageFolder(str(root / "val"), transform=val_tf)
    if val.class_to_idx != train.class_to_idx:
        raise DataError(f"--data-dir {str(data_dir)!r}: train/ and val/ name different classes")
    return train, val
