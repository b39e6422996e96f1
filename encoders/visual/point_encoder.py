"""A Point-BERT-style point-cloud encoder whose tokens are local patches of points.

Farthest point sampling picks ``groups`` centres, each centre's ``k`` nearest neighbours form
a patch (coordinates relative to the centre), a mini PointNet embeds each patch into one
token, an MLP on the centre's coordinates is the token's position embedding, and timm
transformer blocks run over [class token, patch tokens]. The blocks are ``self.blocks`` (an
``nn.Sequential``), so the frozen LM block is appended exactly as for the ViT
(``encoders.visual.vit.insert_after_last_block``), after the last block and before the final norm.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn


def farthest_point_sample(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N, 3) -> (B, n) indices; deterministic: starts from point 0."""
    b, num, _ = xyz.shape
    idx = torch.zeros(b, n, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, num), float("inf"), device=xyz.device)
    farthest = torch.zeros(b, dtype=torch.long, device=xyz.device)
    rows = torch.arange(b, device=xyz.device)
    for i in range(n):
        idx[:, i] = farthest
        centre = xyz[rows, farthest].unsqueeze(1)  # (B, 1, 3)
        dist = torch.minimum(dist, ((xyz - centre) ** 2).sum(-1))
        farthest = dist.argmax(-1)
    return idx


def group(xyz: torch.Tensor, groups: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patches of the k nearest neighbours around FPS centres.

    Returns (patches (B, G, k, 3) relative to their centre, centres (B, G, 3), centre indices
    (B, G))."""
    centre_idx = farthest_point_sample(xyz, groups)
    rows = torch.arange(xyz.shape[0], device=xyz.device).unsqueeze(1)
    centres = xyz[rows, centre_idx]  # (B, G, 3)
    knn = torch.cdist(centres, xyz).topk(k, dim=-1, largest=False).indices  # (B, G, k)
    patches = xyz[rows.unsqueeze(-1), knn] - centres.unsqueeze(2)
    return patches, centres, centre_idx


class MiniPointNet(nn.Module):
    """Point-BERT's patch embedding: shared MLP, max-pool, concat the pooled feature back onto
    every point, a second shared MLP, max-pool again."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Linear(3, 64), nn.GELU(), nn.Linear(64, 128))
        self.second = nn.Sequential(nn.Linear(256, 256), nn.GELU(), nn.Linear(256, dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # (B, G, k, 3) -> (B, G, dim)
        f = self.first(patches)
        pooled = f.amax(dim=2, keepdim=True).expand_as(f)
        return self.second(torch.cat([f, pooled], dim=-1)).amax(dim=2)


class PointTransformer(nn.Module):
    """Point cloud (B, N, 3+) -> class logits; extra input channels are ignored."""

    def __init__(self, *, num_classes: int, groups: int = 16, k: int = 16, embed_dim: int = 64,
                 depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.groups, self.k = groups, k
        self.patch_embed = MiniPointNet(embed_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        # Point-BERT's head: class token next to the max over patch tokens
        self.head = nn.Linear(2 * embed_dim, num_classes)

    def tokens(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3+) -> (B, 1 + G, D): what the blocks (and the frozen block) see."""
        patches, centres, _ = group(points[..., :3].float(), self.groups, self.k)
        x = self.patch_embed(patches) + self.pos_embed(centres)
        cls = (self.cls_token + self.cls_pos).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.tokens(points)))
        return self.head(torch.cat([x[:, 0], x[:, 1:].amax(dim=1)], dim=-1))
