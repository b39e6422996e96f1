"""Motion forecasting's objective: K trajectories and their logits against the agent's future.

The loss is winner-takes-all (smooth-L1 on the mode with the lowest average displacement,
plus cross-entropy toward that mode); validation reports minADE, minFDE and the miss rate
(min final displacement over the modes above 2 m, Argoverse's definition), at K modes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from encoders.visual.vectornet import constant_velocity
from experiments.batches import forward, to_device
from experiments.datasets.polylines import FUTURE, HEADING_LAG

MISS_THRESHOLD = 2.0  # metres, on the final position (Argoverse)


def displacement(traj: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
    """(B, K, T, 2) modes and (B, T, 2) truth -> (B, K, T) distances, metres."""
    return (traj - future[:, None]).norm(dim=-1)


class Trajectories:
    """Winner-takes-all over K modes: smooth-L1 on the mode with the lowest average
    displacement and cross-entropy pulling the logits toward it; minADE, minFDE and the miss
    rate (min final displacement above ``miss_threshold``) over the K modes."""

    def __init__(self, miss_threshold: float = MISS_THRESHOLD) -> None:
        self.miss_threshold = miss_threshold

    def loss(self, out: tuple[torch.Tensor, torch.Tensor], future: torch.Tensor) -> torch.Tensor:
        traj, logits = out
        best = displacement(traj, future).mean(-1).argmin(-1)  # (B,)
        chosen = traj[torch.arange(len(traj), device=traj.device), best]  # (B, T, 2)
        return F.smooth_l1_loss(chosen, future) + F.cross_entropy(logits, best)

    def scores(self, traj: torch.Tensor, future: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample (B,) minADE, minFDE and miss."""
        dist = displacement(traj, future)  # (B, K, T)
        fde = dist[..., -1].amin(-1)
        return {"minADE": dist.mean(-1).amin(-1), "minFDE": fde,
                "miss_rate": (fde > self.miss_threshold).float()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]:
        model.eval()
        sums = {"loss": 0.0, "minADE": 0.0, "minFDE": 0.0, "miss_rate": 0.0}
        n = 0
        for x, future in loader:
            x, future = to_device(x, device), future.to(device)
            out = forward(model, x)
            sums["loss"] += self.loss(out, future).item() * len(future)
            for name, v in self.scores(out[0], future).items():
                sums[name] += v.sum().item()
            n += len(future)
        return {f"val_{k}": v / n for k, v in sums.items()}


TRAJECTORIES = Trajectories()


def baseline_min_ade(dataset: Dataset) -> float:
    """The constant-velocity extrapolation's minADE (K=1) over a dataset."""
    total, n = 0.0, 0
    for (polylines, _), future in DataLoader(dataset, batch_size=256):
        cv = constant_velocity(polylines, FUTURE, HEADING_LAG)
        total += displacement(cv, future).mean(-1).sum().item()
        n += len(future)
    return total / n
