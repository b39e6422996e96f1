"""3D question answering: point-cloud patch tokens and question tokens in one sequence.

The paper's multi-modal setting (its 3D VQA experiments on SQA3D/ScanQA) puts the frozen LM
block over the joint visual + text sequence, so the block's attention mixes the two. Here the
point tokens come from the Point-BERT-style patch embedding of ``encoders.visual.point_encoder``
(farthest point sampling, kNN patches, a mini PointNet, a centre-position MLP), optionally
refined by a few timm blocks over the points alone; the question tokens from a small word
embedding; a modality-type embedding tells the two apart (patch shape and position are each
layer-normed, so that in the joint sequence they weigh as much as the normed words). The
joint sequence
[cls, point tokens, question tokens] runs through ``self.blocks`` (an ``nn.ModuleList`` of
timm ``Block``s, padded question tokens masked), so the frozen block is appended after the
last one exactly as for the ViT (``encoders.visual.vit.insert_after_last_block``), and the
information-filtering probe finds the last encoder block at ``blocks[-2]``. The answer
classifier reads the class token plus the max over the point tokens (Point-BERT's readout).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from encoders.visual.masked_blocks import run_blocks
from encoders.visual.point_encoder import MiniPointNet, group
from encoders.visual.text import TextEmbedding

CLS, POINT, TEXT = 0, 1, 2  # modality types


class PointQuestionModel(nn.Module):
    """(points (B, N, 3+), ids (B, L), mask (B, L)) -> answer logits (B, num_answers).

    Only x, y, z of the points are read (extra channels, such as the object flag, are
    ignored); ``mask`` is True on real question words.
    """

    def __init__(self, *, vocab_size: int, num_answers: int, max_len: int, groups: int = 32,
                 k: int = 32, embed_dim: int = 64, point_depth: int = 1, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.groups, self.k = groups, k
        self.patch_embed = MiniPointNet(embed_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))
        # Patch offsets are a few hundredths of the scene: normed, the patch's shape and its
        # position weigh as much as the (normed) word embeddings in the joint sequence.
        self.patch_norm, self.pos_norm = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.point_blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True)
                                           for _ in range(point_depth)])
        self.text = TextEmbedding(vocab_size, embed_dim, max_len)
        self.type_embed = nn.Embedding(3, embed_dim)
        nn.init.trunc_normal_(self.type_embed.weight, std=0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_answers)

    def point_tokens(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3+) -> (B, G, D): one token per FPS patch, its centre as its position."""
        patches, centres, _ = group(points[..., :3].float(), self.groups, self.k)
        x = self.patch_norm(self.patch_embed(patches)) + self.pos_norm(self.pos_embed(centres))
        for block in self.point_blocks:
            x = block(x)
        return x + self.type_embed.weight[POINT]

    def tokens(self, points: torch.Tensor, ids: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The joint sequence (B, 1 + G + L, D) and its padding mask (B, 1 + G + L)."""
        pts = self.point_tokens(points)
        words = self.text(ids) + self.type_embed.weight[TEXT]  # (B, L, D)
        cls = (self.cls_token + self.type_embed.weight[CLS]).expand(len(pts), -1, -1)
        real = torch.ones(len(pts), 1 + pts.shape[1], dtype=torch.bool, device=pts.device)
        return torch.cat([cls, pts, words], dim=1), torch.cat([real, mask.bool()], dim=1)

    def forward(self, points: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        x, padding = self.tokens(points, ids, mask)
        x = self.norm(run_blocks(self.blocks, x, padding))
        # the class token plus the max over the point tokens (Point-BERT's readout): the
        # max-pool lets a property of any one patch (an object on some side) reach the answer
        return self.head(x[:, 0] + x[:, 1 : 1 + self.groups].amax(dim=1))
