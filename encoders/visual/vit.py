"""Visual backbones, and where the frozen block goes in them.

The paper appends the LM block after the last ViT block and before the final norm; in timm's
``VisionTransformer`` that is the end of ``vit.blocks`` (an ``nn.Sequential`` that
``forward_features`` runs right before ``vit.norm``).
"""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn


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


def insert_after_last_block(vit: nn.Module, block: nn.Module | None) -> nn.Module:
    """Append ``block`` to ``vit.blocks`` (any encoder's ``nn.Sequential`` or ``nn.ModuleList``
    of blocks), so it runs after the last block, before the norm."""
    if block is not None:
        vit.blocks.append(block)
    return vit
