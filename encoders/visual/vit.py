"""Visual backbones, and where the frozen block goes in them.

The paper appends the LM block after the last ViT block and before the final norm; in timm's
``VisionTransformer`` that is the end of ``vit.blocks`` (an ``nn.Sequential`` that
``forward_features`` runs right before ``vit.norm``).
"""

from __future__ import annotations

import copy
from functools import partial

import torch
from timm.layers import HybridEmbed, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from encoders.lm.inserted import VisualBlockSlot
from encoders.visual.placement import mark_inserted


def small_vit(
    *,
    img_size: int,
    in_chans: int,
    num_classes: int,
    patch_size: int = 2,
    embed_dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 2.0,
) -> VisionTransformer:
    """A timm ViT sized for small images, classifying from the class token."""
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        class_token=True,
        global_pool="token",
    )


def conv_stem_vit(*, img_size: int, in_chans: int, num_classes: int, stem_width: int = 32,
                  embed_dim: int = 64, depth: int = 2, num_heads: int = 4,
                  mlp_ratio: float = 2.0) -> VisionTransformer:
    """``small_vit`` with a convolutional stem instead of the patch projection: two 3x3
    convolutions (BatchNorm, ReLU; the second of stride 2), each output position a token
    through timm's ``HybridEmbed``. Early convolutions make a ViT's optimisation converge in
    a few epochs where patchify stems need several times more (Xiao et al., "Early
    Convolutions Help Transformers See Better", NeurIPS 2021); the blocks are the same timm
    blocks, so the frozen LM block goes in the same place. ``img_size // 2`` squared tokens."""
    stem = nn.Sequential(
        nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width),
        nn.ReLU(),
        nn.Conv2d(stem_width, stem_width, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_width),
        nn.ReLU(),
    )
    return VisionTransformer(
        img_size=img_size, patch_size=1, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        class_token=True, global_pool="token", embed_layer=partial(HybridEmbed, backbone=stem),
    )


def insert_after_last_block(vit: nn.Module, block: nn.Module | None) -> nn.Module:
    """Append ``block`` to ``vit.blocks`` (any encoder's ``nn.Sequential`` or ``nn.ModuleList``
    of blocks), so it runs after the last block, before the norm. The ``visual-block``
    control's slot is filled first with one more block like the encoder's last one. The
    module is marked as the inserted one: a trial's ``--positions`` moves it from here
    (``encoders.visual.placement``)."""
    if isinstance(block, VisualBlockSlot):
        made, hidden = one_more_block(vit.blocks[-1], block.lm_params, type(vit).__name__)
        block.fill(made, hidden)
    if block is not None:
        mark_inserted(block)
        vit.blocks.append(block)
    return vit


def _mlp_like(template: Block, hidden: int) -> nn.Module:
    mlp = template.mlp
    return Mlp(mlp.fc1.in_features, hidden, act_layer=type(mlp.act),
               bias=mlp.fc1.bias is not None)


def timm_block_params(template: Block, hidden: int) -> int:
    """Parameters of a block made like ``template`` with an MLP of ``hidden`` units."""
    rest = sum(p.numel() for n, p in template.named_parameters() if not n.startswith("mlp."))
    with torch.device("meta"):
        return rest + sum(p.numel() for p in _mlp_like(template, hidden).parameters())


def check_block_template(template: nn.Module, encoder: str = "encoder") -> None:
    """TypeError unless ``visual-block`` can make a block like ``template`` (timm's ViT
    ``Block`` with an ``Mlp``): the sweep's pre-flight asks before Ray starts."""
    if not isinstance(template, Block) or not isinstance(getattr(template, "mlp", None), Mlp):
        raise TypeError(f"control 'visual-block': {encoder}'s last block is a "
                        f"{type(template).__name__} ({type(template).__module__}), not timm's "
                        "vision_transformer.Block with an Mlp, so no block of its kind can be "
                        "made; valid: the other controls")


def one_more_block(template: nn.Module, target: int, encoder: str = "encoder"
                   ) -> tuple[nn.Module, int]:
    """A new trainable block of ``template``'s kind (a copy of timm's ``Block``: its width,
    heads, biases, norms), its MLP as wide as brings its parameter count closest to
    ``target`` (at least 1 unit: a target below the attention's own count cannot be met),
    re-initialised as timm's ViT (truncated-normal .02 linear weights, zero biases, unit
    norms). Returns (block, MLP width)."""
    check_block_template(template, encoder)
    fixed = timm_block_params(template, 1)
    step = timm_block_params(template, 2) - fixed  # parameters per MLP unit: 2 x dim + 1
    hidden = max(1, round((target - fixed) / step) + 1)
    block = copy.deepcopy(template)
    block.mlp = _mlp_like(template, hidden)
    for m in block.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            m.reset_parameters()
    block.requires_grad_(True)
    return block, hidden
