"""Image classification on real images from ``--data-dir``.

- ``images``: any timm model with a ``blocks`` sequence (``--encoder NAME``) on any
  ImageFolder tree: its classes from the folder, its input size and normalisation from the
  model's ``pretrained_cfg`` (``--image-size`` overrides the size), timm's
  ``create_transform`` for training and evaluation.
- ``imagenet-vit-tiny`` / ``imagenet-vit-small``: presets of the same code, the paper's
  models (timm's ViT-Tiny / ViT-Small at 224) on ImageNet's 1000 classes with DeiT's
  transforms (``experiments/presets/imagenet_deit.yaml``). Their encoder is the task's own
  (the EncoderChoice fields at their defaults), so their cells keep the keys they had.
- ``cifar10`` / ``cifar100``: torchvision's CIFAR at 32x32 with a ViT-Tiny-wide ViT.
Mixup/CutMix, label smoothing and the schedule are hyperparameters.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch import nn

from encoders.visual.vit import insert_after_last_block
from experiments.datasets.cifar import CIFAR, build_cifar, check_cifar
from experiments.datasets.imagefolder import (
    IMAGENET_CLASSES,
    folder_classes,
    imagefolder_check,
    imagefolder_data,
    model_transforms,
)
from experiments.tasks.examples import random_images
from experiments.tasks.registry import Task, register_task
from experiments.trial import EncoderChoice

# The ``images`` task as registered, before a sweep chooses its encoder: what the registry
# test builds (every control on its example), small enough for a CPU.
EXAMPLE_ENCODER = EncoderChoice(name="vit_tiny_patch16_224", image_size=32)
EXAMPLE_CLASSES = 10


def cifar_vit(num_classes: int):
    """ViT-Tiny's width and depth (192 x 12, 3 heads) on 32x32 images, 4x4 patches: 64 tokens."""
    def build_model(block: nn.Module | None) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        vit = VisionTransformer(img_size=32, patch_size=4, num_classes=num_classes,
                                embed_dim=192, depth=12, num_heads=3, class_token=True,
                                global_pool="token")
        return insert_after_last_block(vit, block)

    return build_model


def timm_model(name: str, num_classes: int, image_size: int = 0):
    """The task's model: timm's ``name`` (untrained) with the block after its last block."""
    def build_model(block: nn.Module | None) -> nn.Module:
        from encoders.visual.timm_encoder import create_encoder

        return insert_after_last_block(create_encoder(name, num_classes, image_size), block)

    return build_model


def images_data(data_config: dict, data_dir: str | Path | None = None):
    return imagefolder_data(data_dir, model_transforms(data_config), max_classes=None)


def images_task(choice: EncoderChoice, data_dir: str | Path | None = None) -> Task:
    """The ``images`` task for ``choice`` (its classes read from ``data_dir`` when given):
    the encoder described by timm on the meta device, so a bad name or size is one line."""
    from encoders.visual.timm_encoder import EncoderChoiceError, describe

    if not choice.name:
        raise EncoderChoiceError("task 'images' needs --encoder: a timm model name; valid: "
                                 "e.g. vit_tiny_patch16_224, deit_small_patch16_224")
    classes = len(folder_classes(data_dir)) if data_dir is not None else EXAMPLE_CLASSES
    info = describe(choice.name, choice.image_size, classes)
    size = info.data_config["input_size"][-1]
    return Task(
        name="images",
        description=f"ImageFolder tree{f' of {classes} classes' if data_dir else ''}, timm "
                    f"{choice.name} at {size}x{size} with its pretrained_cfg's transforms",
        visual_dim=info.width,
        build_data=partial(images_data, info.data_config),
        build_model=timm_model(choice.name, classes, choice.image_size),
        check_data=folder_classes,
        chance=1 / classes,
        num_classes=classes,
        example=random_images(size, classes),
        timm_encoder=True,
        configure=images_task,
    )


for _task, (_folder, _tr, _te, _key, _classes) in CIFAR.items():
    register_task(Task(
        name=_task,
        description=f"{_task.upper()} (torchvision format) at 32x32, ViT-Tiny width, 4x4 patches",
        visual_dim=192,
        build_data=partial(build_cifar, _task),
        build_model=cifar_vit(_classes),
        check_data=partial(check_cifar, _task),
        chance=1 / _classes,
        num_classes=_classes,
        example=random_images(32, _classes),
        timm_encoder=True,
    ))

for _task, _model, _dim in (("imagenet-vit-tiny", "vit_tiny_patch16_224", 192),
                            ("imagenet-vit-small", "vit_small_patch16_224", 384)):
    register_task(Task(
        name=_task,
        description=f"ImageFolder tree (ImageNet layout) at 224, timm {_model}, DeiT transforms",
        visual_dim=_dim,
        build_data=imagefolder_data,
        build_model=timm_model(_model, IMAGENET_CLASSES),
        check_data=imagefolder_check,
        chance=1 / IMAGENET_CLASSES,
        num_classes=IMAGENET_CLASSES,
        example=random_images(224, IMAGENET_CLASSES),
        timm_encoder=True,
    ))

register_task(images_task(EXAMPLE_ENCODER))
