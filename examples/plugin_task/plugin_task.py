"""An lmblocks plugin in one module: a task of its own (procedural shapes), its own encoder
built from timm blocks, and its registration.

Importing this module registers the task and imports no torch (lmblocks imports every
installed plugin to plan a sweep, and planning answers in well under a second): torch and
timm are imported inside the functions that build data and models, which run in a trial.

    pip install -e examples/plugin_task
    lmblocks-sweep --tasks plugin-shapes --controls none pretrained --seeds 0 1 --epochs 4 \
        --batch-size 16

Data: 16x16 one-channel images of one of three shapes (a square outline, a filled disc, a
plus sign) of random size and place, at random brightness, in Gaussian noise; 1,000 training
and 300 validation images, the same for every trial (seeded). Chance is 1/3.

Encoder: timm's ``PatchEmbed`` (4x4 patches: 16 tokens) and a class token, learned
positions, two timm ``Block``s in ``self.blocks`` (where lmblocks appends the frozen LM
block, as in its own ViTs), a final norm and a linear head on the class token.
"""

from __future__ import annotations

from functools import cache

from experiments.tasks.catalog import TaskCost, TaskEntry, register_catalog_row
from experiments.tasks.registry import Task, register_task, validation_examples

NAME = "plugin-shapes"
SHAPES = ("square", "disc", "plus")
SIZE, PATCH, WIDTH, DEPTH, HEADS = 16, 4, 32, 2, 4
TRAIN, VAL, SEED = 1000, 300, 0
NOISE = 0.15
INK = 0.5  # a patch with a pixel this bright holds part of the shape (noise: 3.3 sigma)


def _images(n: int, seed: int):
    """(n, 1, SIZE, SIZE) float images and (n,) labels, balanced over SHAPES."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(SHAPES)
    labels = labels[torch.randperm(n, generator=g)]
    radius = torch.randint(3, 7, (n, 1, 1), generator=g)  # half-width 3..6 pixels
    cy = (torch.rand(n, 1, 1, generator=g) * (SIZE - 2 * radius - 1) + radius).round()
    cx = (torch.rand(n, 1, 1, generator=g) * (SIZE - 2 * radius - 1) + radius).round()
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    dy, dx = (yy - cy).abs(), (xx - cx).abs()  # (n, SIZE, SIZE)
    square = (torch.maximum(dy, dx) <= radius) & (torch.maximum(dy, dx) >= radius - 1)
    disc = dy.square() + dx.square() <= radius.square()
    plus = ((dy <= 1) & (dx <= radius)) | ((dx <= 1) & (dy <= radius))
    masks = torch.stack([square, disc, plus], 1)[torch.arange(n), labels]  # (n, SIZE, SIZE)
    brightness = 0.7 + 0.3 * torch.rand(n, 1, 1, generator=g)
    x = masks.float() * brightness + NOISE * torch.randn(n, SIZE, SIZE, generator=g)
    return x.unsqueeze(1), labels


@cache
def _splits():
    from torch.utils.data import TensorDataset

    return TensorDataset(*_images(TRAIN, SEED)), TensorDataset(*_images(VAL, SEED + 1))


def build_data(data_dir=None):
    """(train, validation): generated here, ``data_dir`` is not used."""
    return _splits()


@cache
def encoder_class() -> type:
    """The encoder's class, defined on first use so that this module imports no torch."""
    import torch
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import Block
    from torch import nn

    class ShapeEncoder(nn.Module):
        def __init__(self, num_classes: int = len(SHAPES)) -> None:
            super().__init__()
            self.patch_embed = PatchEmbed(SIZE, PATCH, in_chans=1, embed_dim=WIDTH)
            tokens = self.patch_embed.num_patches + 1
            self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, WIDTH))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            self.blocks = nn.Sequential(*[Block(WIDTH, HEADS, mlp_ratio=2.0, qkv_bias=True)
                                          for _ in range(DEPTH)])
            self.norm = nn.LayerNorm(WIDTH)
            self.head = nn.Linear(WIDTH, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)  # (B, 1, 16, 16) -> (B, 16, WIDTH)
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
            return self.head(self.norm(self.blocks(x))[:, 0])  # (B, 17, WIDTH) -> logits

    ShapeEncoder.__module__ = __name__
    return ShapeEncoder


def build_model(block=None):
    """The encoder with ``block`` (lmblocks' inserted module, or None) after its last block."""
    from encoders.visual.vit import insert_after_last_block

    return insert_after_last_block(encoder_class()(), block)


def shape_patches(x):
    """(B, 1, 16, 16) -> (B, 16) bool: the patches the shape covers, in PatchEmbed's order,
    for lmblocks' information-filtering probe."""
    b = len(x)
    patches = x.reshape(b, SIZE // PATCH, PATCH, SIZE // PATCH, PATCH).amax(dim=(2, 4))
    return (patches > INK).reshape(b, -1)


# The plan reads this row (plain data) without importing anything else; the cost numbers are
# the model's own: FlopCounterMode on the encoder without a block (see test_plugin_task.py).
register_catalog_row(TaskEntry(NAME, __name__, cost=TaskCost(
    encoder_gflops=0.000648, sequences=(17,), width=WIDTH, train_samples=TRAIN,
    val_samples=VAL)))
TASK = register_task(Task(
    name=NAME,
    description="procedural shapes (16x16: square, disc, plus in noise), a timm-block "
                "encoder of its own, classification from the class token",
    visual_dim=WIDTH,
    build_data=build_data,
    build_model=build_model,
    informative_tokens=shape_patches,
    chance=1 / len(SHAPES),
    num_classes=len(SHAPES),
    example=validation_examples(build_data),
))
