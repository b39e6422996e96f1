"""Image classification on scikit-learn's digits (embedded): a small timm ViT, the block after
its last block, classification from the class token.

Two encoders: ``digits`` patchifies (2x2 patches, as the paper's ViTs do), ``digits-convstem``
starts with two convolutions (the default sweep's task: its no-block baseline converges in
8 epochs, where the patchify ViT still gains after 24; see ``conv_stem_vit``). Both give 16
tokens on the same 4x4 grid, so the informative-token mask is the same."""

from __future__ import annotations

import torch
from torch import nn

from encoders.visual.vit import conv_stem_vit, insert_after_last_block, small_vit
from experiments.datasets.digits import CLASSES, build_digits
from experiments.tasks.registry import Task, register_task, validation_examples

EMBED_DIM = 64
PATCH = 2
INK = 0.25  # a patch with a pixel above a quarter of full intensity holds part of the digit


def ink_patches(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, 8, 8) -> (B, 16) bool, in timm's row-major patch order."""
    b, _, h, w = x.shape
    patches = x.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH).amax(dim=(2, 4))
    return (patches > INK).reshape(b, -1)


def build_model(block: nn.Module | None) -> nn.Module:
    vit = small_vit(img_size=8, in_chans=1, num_classes=CLASSES, embed_dim=EMBED_DIM,
                    patch_size=PATCH)
    return insert_after_last_block(vit, block)


def build_convstem_model(block: nn.Module | None) -> nn.Module:
    vit = conv_stem_vit(img_size=8, in_chans=1, num_classes=CLASSES, embed_dim=EMBED_DIM)
    return insert_after_last_block(vit, block)


def _register(name: str, description: str, build) -> Task:
    return register_task(Task(
        name=name,
        description=description,
        visual_dim=EMBED_DIM,
        build_data=build_digits,
        build_model=build,
        informative_tokens=ink_patches,
        chance=1 / CLASSES,
        num_classes=CLASSES,
        example=validation_examples(build_digits),
        timm_encoder=True,  # timm's VisionTransformer: --encoder-weights, --encoder-train
    ))


DIGITS = _register(
    "digits", "scikit-learn digits (8x8), timm ViT, classification from the class token",
    build_model)
DIGITS_CONVSTEM = _register(
    "digits-convstem", "scikit-learn digits (8x8), timm ViT with a convolutional stem "
    "(16 tokens), classification from the class token", build_convstem_model)
