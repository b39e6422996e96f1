"""Image classification on real datasets from ``--data-dir``: CIFAR-10/100 in torchvision's
on-disk format, and ImageNet-style ``ImageFolder`` trees (``train/`` and ``val/``, one folder
per class) with timm's ViT-Tiny / ViT-Small at 224, the paper's models.

Augmentation is part of the task (it is the dataset's recipe): CIFAR gets random crop with
4-pixel padding and horizontal flips; ImageFolder trees get timm's DeiT training transform
(random resized crop, flip, RandAugment m9, random erasing 0.25) and the standard resize +
centre crop for validation. Mixup/CutMix, label smoothing and the schedule are
hyperparameters (``experiments/presets/imagenet_deit.yaml``, ``cifar_small.yaml``).

CIFAR's python batches are pickles; they are read with an unpickler that only admits the
numpy array reconstructors such a batch holds, never arbitrary code.
"""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from encoders.vit import insert_after_last_block
from experiments.tasks.registry import DataError, Task, data_root, register_task

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


def cifar_vit(num_classes: int):
    """ViT-Tiny's width and depth (192 x 12, 3 heads) on 32x32 images, 4x4 patches: 64 tokens."""
    def build_model(block: nn.Module | None) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        vit = VisionTransformer(img_size=32, patch_size=4, num_classes=num_classes,
                                embed_dim=192, depth=12, num_heads=3, class_token=True,
                                global_pool="token")
        return insert_after_last_block(vit, block)

    return build_model


# --- ImageNet-style ImageFolder trees at 224 ---------------------------------------------

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


def timm_vit(name: str):
    def build_model(block: nn.Module | None) -> nn.Module:
        import timm

        vit = timm.create_model(name, pretrained=False, num_classes=IMAGENET_CLASSES)
        return insert_after_last_block(vit, block)

    return build_model


for _task, (_folder, _tr, _te, _key, _classes) in CIFAR.items():
    register_task(Task(
        name=_task,
        description=f"{_task.upper()} (torchvision format) at 32x32, ViT-Tiny width, 4x4 patches",
        visual_dim=192,
        build_data=lambda data_dir=None, t=_task: _cifar(t, str(data_dir)),
        build_model=cifar_vit(_classes),
        check_data=lambda data_dir, t=_task: cifar_files(t, data_dir) and None,
        chance=1 / _classes,
        num_classes=_classes,
    ))

for _task, _model, _dim in (("imagenet-vit-tiny", "vit_tiny_patch16_224", 192),
                            ("imagenet-vit-small", "vit_small_patch16_224", 384)):
    register_task(Task(
        name=_task,
        description=f"ImageFolder tree (ImageNet layout) at 224, timm {_model}, DeiT transforms",
        visual_dim=_dim,
        build_data=imagefolder_data,
        build_model=timm_vit(_model),
        check_data=imagefolder_check,
        chance=1 / IMAGENET_CLASSES,
        num_classes=IMAGENET_CLASSES,
    ))
