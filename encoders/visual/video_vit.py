"""A video ViT with tube patch embedding (VideoMAE-style): a clip (B, C, T, H, W) is cut into
``tube x patch x patch`` tubes by one strided Conv3d, each tube is a token, fixed sine-cosine
position embeddings over the (t, h, w) grid (as VideoMAE), a class token, timm blocks in
``self.blocks`` (so the frozen LM block is appended exactly as for the image ViT), final norm
and a linear head on the class token.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import Block
from torch import nn


def sincos_positions(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed sine-cosine embedding of positions 0..n-1 (transformer style)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    out = torch.zeros(n, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return out


class VideoViT(nn.Module):
    def __init__(self, *, num_classes: int, frames: int, img_size: int, in_chans: int = 3,
                 tube: int = 2, patch: int = 16, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if frames % tube or img_size % patch:
            raise ValueError(f"frames {frames} / tube {tube} and size {img_size} / patch {patch} "
                             "must divide evenly")
        self.grid = (frames // tube, img_size // patch, img_size // patch)
        self.patch_embed = nn.Conv3d(in_chans, embed_dim, (tube, patch, patch), (tube, patch, patch))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.register_buffer("pos_embed", sincos_positions(math.prod(self.grid) + 1, embed_dim)[None],
                             persistent=False)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(clip).flatten(2).transpose(1, 2)  # (B, T'*H'*W', D), t-major
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])
