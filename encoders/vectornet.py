"""A VectorNet-style encoder for motion forecasting (Gao et al., CVPR 2020), with a
multi-modal trajectory decoder.

A scene is a set of polylines (the agent's history, other agents' histories, lane
centerlines), each a short sequence of vectors. A per-polyline subgraph (per-vector MLP,
max-pool over the polyline, the pooled feature concatenated back, repeated; a final max-pool)
turns each polyline into one token; timm ``Block``s in ``self.blocks`` then attend over the
polyline tokens, so the frozen LM block appended there (``insert_after_last_block``) sees one
token per polyline, exactly as it sees one token per patch in the ViT. There is no class
token: the agent's own history is polyline 0, and the decoder reads its token.

Padded vectors are left out of every max-pool; padded polylines are masked as keys in every
block (``encoders.masked_blocks.run_blocks``), so adding padding does not change the output.

The vector feature layout below is shared by every forecasting task; its last channel flags
the polylines the agent's future follows, for the information-filtering probe only: the
encoder never reads it.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from encoders.masked_blocks import run_blocks

# --- vector feature layout (B, P polylines, V vectors, FEATURES) ---------------------------
START = slice(0, 2)  # x, y of the vector's start, metres, agent-centric frame
END = slice(2, 4)  # x, y of its end
COORDS = 4  # the first COORDS channels are positions (scaled by the model)
TYPE_AGENT, TYPE_OTHER, TYPE_LANE = 4, 5, 6  # one-hot polyline type
STEP = 7  # time step / history length (trajectories) or vector index / max vectors (lanes)
INTERSECTION, TURN, TRAFFIC_CONTROL = 8, 9, 10  # lane attributes (turn: +1 left, -1 right)
VALID = 11  # 1 on real vectors, 0 on padding
INFORMATIVE = 12  # the probe's flag: the agent's future follows this polyline (ignored here)
FEATURES = 13
ENCODER_FEATURES = VALID  # channels [0, VALID) are the encoder's input


class SubgraphLayer(nn.Module):
    """VectorNet's polyline subgraph layer: (B, P, V, in) -> (B, P, V, 2 * hidden)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU())

    def forward(self, x: torch.Tensor, vector_mask: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)  # (B, P, V, hidden)
        pooled = masked_max(h, vector_mask)  # (B, P, hidden)
        return torch.cat([h, pooled[:, :, None].expand_as(h)], dim=-1)


def masked_max(h: torch.Tensor, vector_mask: torch.Tensor) -> torch.Tensor:
    """Max over the vectors (dim 2) of (B, P, V, D), real vectors only; 0 for an empty polyline."""
    pooled = h.masked_fill(~vector_mask[..., None], float("-inf")).amax(dim=2)
    return torch.where(vector_mask.any(dim=2)[..., None], pooled, torch.zeros_like(pooled))


class VectorNet(nn.Module):
    """Polylines (B, P, V, FEATURES) + polyline mask (B, P) -> K trajectories (B, K, T, 2) in
    metres and their logits (B, K).

    ``pos_scale`` divides the position channels on the way in (metres -> about unit scale);
    the decoder's output is multiplied by it on the way out, so the metrics stay in metres.
    """

    def __init__(self, *, width: int = 64, subgraph_layers: int = 3, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0, modes: int = 6,
                 future_steps: int = 30, pos_scale: float = 10.0) -> None:
        super().__init__()
        if width % 2:
            raise ValueError(f"width must be even (a subgraph layer concatenates two halves), "
                             f"got {width}")
        self.modes, self.future_steps, self.pos_scale = modes, future_steps, pos_scale
        dims = [ENCODER_FEATURES] + [width] * (subgraph_layers - 1)
        self.subgraph = nn.ModuleList(SubgraphLayer(d, width // 2) for d in dims)
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.traj_head = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(),
                                       nn.Linear(2 * width, modes * future_steps * 2))
        self.mode_head = nn.Linear(width, modes)

    def tokens(self, polylines: torch.Tensor) -> torch.Tensor:
        """(B, P, V, FEATURES) -> (B, P, width): one token per polyline."""
        x = polylines[..., :ENCODER_FEATURES]
        x = torch.cat([x[..., :COORDS] / self.pos_scale, x[..., COORDS:]], dim=-1)
        vector_mask = polylines[..., VALID] > 0.5  # (B, P, V)
        for layer in self.subgraph:
            x = layer(x, vector_mask)
        return masked_max(x, vector_mask)

    def forward(self, polylines: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = run_blocks(self.blocks, self.tokens(polylines), valid.bool())
        agent = self.norm(x[:, 0])  # (B, width): the agent's history is polyline 0
        b = agent.shape[0]
        traj = self.traj_head(agent).view(b, self.modes, self.future_steps, 2)  # (B, K, T, 2)
        return traj * self.pos_scale, self.mode_head(agent)
