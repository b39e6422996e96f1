"""Image classification on real datasets from ``--data-dir``: CIFAR-10/100 at 32x32 with a
ViT-Tiny-wide ViT, and ImageFolder trees (ImageNet layout) with timm's ViT-Tiny / ViT-Small
at 224, the paper's models. Mixup/CutMix, label smoothing and the schedule are
hyperparameters (``experiments/presets/imagenet_deit.yaml``, ``cifar_small.yaml``)."""

from __future__ import annotations

from functools import partial

from torch import nn

from encoders.visual.vit import insert_after_last_block
from experiments.datasets.cifar import CIFAR, build_cifar, check_cifar
from experiments.datasets.imagefolder import IMAGENET_CLASSES, imagefolder_check, imagefolder_data
from experiments.tasks.examples import random_images
from experiments.tasks.registry import Task, register_task


def cifar_vit(num_classes: int):
    """ViT-Tiny's width and depth (192 x 12, 3 heads) on 32x32 images, 4x4 patches: 64 tokens."""
    def build_model(block: nn.Module | None) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        vit = VisionTransformer(img_size=32, patch_size=4, num_classes=num_classes,
                                embed_dim=192, depth=12, num_heads=3, class_token=True,
                                global_pool="token")
        return insert_after_last_block(vit, block)

    return build_model


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
        build_data=partial(build_cifar, _task),
        build_model=cifar_vit(_classes),
        check_data=partial(check_cifar, _task),
        chance=1 / _classes,
        num_classes=_classes,
        example=random_images(32, _classes),
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
        example=random_images(224, IMAGENET_CLASSES),
    ))
