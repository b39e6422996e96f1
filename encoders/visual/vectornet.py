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
block (``encoders.visual.masked_blocks.run_blocks``), so adding padding does not change the output.

The vector feature layout below is shared by every forecasting task; its last channel flags
the polylines the agent's future follows, for the information-filtering probe only: the
encoder never reads it.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from timm.models.vision_transformer import Block
from torch import nn

from encoders.visual.masked_blocks import run_blocks

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


def constant_velocity(polylines: torch.Tensor, steps: int, lag: int = 5) -> torch.Tensor:
    """The agent's history (polyline 0) extrapolated from the origin at its mean velocity over
    its last ``lag`` vectors: (B, P, V, FEATURES) -> (B, 1, steps, 2), metres."""
    agent = polylines[:, 0]  # (B, V, FEATURES)
    n = agent[..., VALID].sum(-1).long()  # (B,) real vectors, the first n
    idx = (n[:, None] - 1 - torch.arange(lag, device=n.device)).clamp_min(0)  # (B, lag)
    moves = (agent[..., END] - agent[..., START]).gather(1, idx[..., None].expand(-1, -1, 2))
    velocity = moves.mean(1)  # (B, 2) metres per step
    t = torch.arange(1, steps + 1, dtype=polylines.dtype, device=polylines.device)
    return (t[None, :, None] * velocity[:, None])[:, None]


class SubgraphLayer(nn.Module):
    """One layer of VectorNet's polyline subgraph: a per-vector MLP (Linear, LayerNorm, ReLU)
    over [the vector's feature, its polyline's max-pooled feature]: (B, P, V, in) -> (B, P, V,
    out). The concatenation goes through the Linear as the sum of two maps, one per half, so
    it is never materialised (the subgraph is most of this model's compute)."""

    def __init__(self, in_dim: int, out_dim: int, pooled: bool = True) -> None:
        super().__init__()
        self.vector = nn.Linear(in_dim, out_dim)
        self.pooled = nn.Linear(in_dim, out_dim, bias=False) if pooled else None
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, h: torch.Tensor, vector_mask: torch.Tensor) -> torch.Tensor:
        """``h`` is 0 on padded vectors, ``vector_mask`` (B, P, V, 1) 1.0 on real ones; the
        output is non-negative (ReLU) and 0 on padding again, so a max over a polyline is a
        max over its real vectors."""
        z = self.vector(h)
        if self.pooled is not None:
            z = z + self.pooled(h.amax(dim=2, keepdim=True))  # (B, P, 1, out), broadcast
        return torch.relu(self.norm(z)) * vector_mask


class VectorNet(nn.Module):
    """Polylines (B, P, V, FEATURES) + polyline mask (B, P) -> K trajectories (B, K, T, 2) in
    metres and their logits (B, K).

    The trajectories are offsets from the constant-velocity extrapolation of the agent's
    history (a kinematic anchor), so the network learns where the lanes take the agent away
    from it: on the embedded road graphs, 4 epochs reached a minADE of 0.95 m with the anchor
    and 1.97 m without (constant velocity alone: 2.14 m). ``pos_scale`` divides the position
    channels on the way in (metres -> about unit scale) and multiplies the decoder's offsets
    on the way out, so the metrics stay in metres.
    """

    def __init__(self, *, width: int = 64, subgraph_layers: int = 3, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0, modes: int = 6,
                 future_steps: int = 30, pos_scale: float = 10.0) -> None:
        super().__init__()
        self.modes, self.future_steps, self.pos_scale = modes, future_steps, pos_scale
        scale = torch.ones(ENCODER_FEATURES)
        scale[:COORDS] = 1 / pos_scale
        self.register_buffer("input_scale", scale, persistent=False)
        # VectorNet's layers: the first sees the vector alone, the others their polyline too;
        # the last is as wide as the tokens, whose feature is its max over the polyline.
        dims = [ENCODER_FEATURES] + [width // 2] * (subgraph_layers - 1) + [width]
        self.subgraph = nn.ModuleList(SubgraphLayer(d_in, d_out, pooled=i > 0)
                                      for i, (d_in, d_out) in enumerate(pairwise(dims)))
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.traj_head = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(),
                                       nn.Linear(2 * width, modes * future_steps * 2))
        self.mode_head = nn.Linear(width, modes)

    def tokens(self, polylines: torch.Tensor) -> torch.Tensor:
        """(B, P, V, FEATURES) -> (B, P, width): one token per polyline."""
        vector_mask = (polylines[..., VALID:VALID + 1] > 0.5).to(polylines.dtype)  # (B, P, V, 1)
        x = polylines[..., :ENCODER_FEATURES] * self.input_scale * vector_mask
        for layer in self.subgraph:
            x = layer(x, vector_mask)
        return x.amax(dim=2)  # (B, P, width); 0 for a padded polyline

    def forward(self, polylines: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = run_blocks(self.blocks, self.tokens(polylines), valid.bool())
        agent = self.norm(x[:, 0])  # (B, width): the agent's history is polyline 0
        b = agent.shape[0]
        offsets = self.traj_head(agent).view(b, self.modes, self.future_steps, 2)  # (B, K, T, 2)
        anchor = constant_velocity(polylines, self.future_steps)  # (B, 1, T, 2)
        return anchor + offsets * self.pos_scale, self.mode_head(agent)
