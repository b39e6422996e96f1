"""``ImageFolder`` trees (``train/`` and ``val/``, one folder per class) from ``--data-dir``:
with timm's DeiT transforms at 224 (random resized crop, flip, RandAugment m9, random erasing
0.25; resize + centre crop for validation: the ImageNet presets), or with timm's transforms
at a model's own ``pretrained_cfg`` (the ``images`` task)."""

from __future__ import annotations

from pathlib import Path

from experiments.datasets.base import DataError

IMAGENET_CLASSES = 1000
FOLDER_LAYOUT = "train/<class>/*.jpeg and val/<class>/*.jpeg (ImageFolder)"


def folder_classes(data_dir: str | Path | None, max_classes: int | None = None) -> list[str]:
    """The class names of an ImageFolder tree (its ``train/`` folders, which ``val/`` must
    name alike), or DataError naming what is wrong and the layout expected."""
    if data_dir is None:
        raise DataError(f"ImageFolder tasks need --data-dir: a folder holding {FOLDER_LAYOUT}")
    root = Path(data_dir)
    classes = {}
    for split in ("train", "val"):
        d = root / split
        names = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        if not names:
            raise DataError(f"--data-dir {str(data_dir)!r}: no class folders in {split}/; "
                            f"expected {FOLDER_LAYOUT}")
        classes[split] = names
    if classes["train"] != classes["val"]:
        odd = sorted(set(classes["train"]) ^ set(classes["val"]))[:5]
        raise DataError(f"--data-dir {str(data_dir)!r}: train/ and val/ name different "
                        f"classes ({', '.join(odd)}); valid: the same class folders in both")
    if max_classes is not None and len(classes["train"]) > max_classes:
        raise DataError(f"--data-dir {str(data_dir)!r}: {len(classes['train'])} classes; "
                        f"valid: at most {max_classes}")
    return classes["train"]


def imagefolder_check(data_dir: str | Path | None) -> None:
    """The ImageNet presets' check: an ImageFolder tree of at most 1000 classes."""
    folder_classes(data_dir, IMAGENET_CLASSES)


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


def deit_transforms():
    """DeiT's ImageNet recipe at 224 (the ImageNet presets): RandAugment m9, random erasing
    0.25, bicubic; ImageNet's mean and std; centre crop 0.875 for validation."""
    from timm.data import create_transform

    train_tf = create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                                re_prob=0.25, interpolation="bicubic")
    keep_zero_bit_posterize(train_tf)
    val_tf = create_transform(224, is_training=False, interpolation="bicubic", crop_pct=0.875)
    return train_tf, val_tf


def model_transforms(data_config: dict):
    """timm's own train and eval transforms at a model's ``pretrained_cfg`` (input size,
    interpolation, mean, std, crop), as ``timm.data.resolve_data_config`` gives it."""
    from timm.data import create_transform

    return (create_transform(**data_config, is_training=True),
            create_transform(**data_config, is_training=False))


def imagefolder_data(data_dir: str | Path | None = None, transforms=None,
                     max_classes: int | None = IMAGENET_CLASSES):
    """(train, val) ImageFolder datasets; ``transforms``: (train, eval) (default: DeiT's)."""
    from torchvision.datasets import ImageFolder

    folder_classes(data_dir, max_classes)
    root = Path(data_dir)
    train_tf, val_tf = transforms if transforms is not None else deit_transforms()
    train = ImageFolder(str(root / "train"), transform=train_tf)
    val = ImageFolder(str(root / "val"), transform=val_tf)
    if val.class_to_idx != train.class_to_idx:
        raise DataError(f"--data-dir {str(data_dir)!r}: train/ and val/ name different classes")
    return train, val
