"""Motion-forecasting samples as polylines: the preprocessing every forecasting dataset shares.

A sample is one agent-centric scene: the origin is the agent's last observed position and
the x axis its heading; everything is in metres. Inputs are ``(polylines, valid)``:
polylines (P, V, FEATURES) in ``encoders.visual.vectornet``'s vector layout (agent history
first, then lanes and other agents, nearest first, padded) and the polyline mask (P,); the
target is the agent's future (FUTURE, 2). Timing is Argoverse-1's: 10 Hz, 20 steps observed,
30 predicted.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from encoders.visual.vectornet import (
    END,
    FEATURES,
    INFORMATIVE,
    INTERSECTION,
    START,
    STEP,
    TRAFFIC_CONTROL,
    TURN,
    TYPE_AGENT,
    TYPE_LANE,
    TYPE_OTHER,
    VALID,
)

HZ, HISTORY, FUTURE = 10, 20, 30  # Argoverse-1: 2 s observed, 3 s predicted
MAX_VECTORS = 20  # per polyline: a history's 19 steps; lanes are split into such chunks
HEADING_LAG = 5  # steps over which the agent's heading is measured (0.5 s)


def agent_heading(observed: np.ndarray) -> float:
    """The heading (rad) of an observed track (N, 2): over the last HEADING_LAG steps, or the
    whole history when that is too short a move; 0 (the map's x axis) for a parked agent."""
    for start in (observed[-1 - HEADING_LAG], observed[0]):
        d = observed[-1] - start
        if np.hypot(*d) > 0.2:
            return float(np.arctan2(d[1], d[0]))
    return 0.0


def to_agent_frame(points: np.ndarray, origin: np.ndarray, heading: float) -> np.ndarray:
    """(..., 2) map coordinates -> the frame with ``origin`` at 0 and ``heading`` along +x."""
    c, s = math.cos(heading), math.sin(heading)
    return (points - origin) @ np.array([[c, -s], [s, c]])  # row-vector form of R(-heading)


def trajectory_polyline(xy: np.ndarray, observed: np.ndarray, agent: bool) -> np.ndarray:
    """An observed track (HISTORY, 2) with its observed flags -> (MAX_VECTORS, FEATURES):
    one vector per pair of consecutive observed steps, stamped with the step."""
    out = np.zeros((MAX_VECTORS, FEATURES), np.float32)
    steps = np.flatnonzero(observed[:-1] & observed[1:])[:MAX_VECTORS]
    n = len(steps)
    out[:n, START], out[:n, END] = xy[steps], xy[steps + 1]
    out[:n, TYPE_AGENT if agent else TYPE_OTHER] = 1
    out[:n, STEP] = (steps + 1) / HISTORY
    out[:n, VALID] = 1
    return out


def lane_polylines(points: np.ndarray, intersection: float = 0.0, turn: float = 0.0,
                   traffic_control: float = 0.0) -> list[np.ndarray]:
    """A centerline (N, 2) -> chunks of at most MAX_VECTORS vectors, each (MAX_VECTORS,
    FEATURES); chunks share their end points."""
    chunks = []
    for i in range(0, max(len(points) - 1, 1), MAX_VECTORS):
        seg = points[i:i + MAX_VECTORS + 1]
        n = len(seg) - 1
        if n < 1:
            continue
        out = np.zeros((MAX_VECTORS, FEATURES), np.float32)
        out[:n, START], out[:n, END] = seg[:-1], seg[1:]
        out[:n, TYPE_LANE] = 1
        out[:n, STEP] = (np.arange(n) + 1) / MAX_VECTORS
        out[:n, INTERSECTION], out[:n, TURN] = intersection, turn
        out[:n, TRAFFIC_CONTROL] = traffic_control
        out[:n, VALID] = 1
        chunks.append(out)
    return chunks


def assemble(agent: np.ndarray, others: list[np.ndarray],
             max_polylines: int) -> tuple[np.ndarray, np.ndarray]:
    """The agent's polyline first, then the others nearest first (by their nearest vector end
    point), capped and padded: (max_polylines, MAX_VECTORS, FEATURES) and the mask."""
    polylines = np.zeros((max_polylines, MAX_VECTORS, FEATURES), np.float32)
    polylines[0] = agent
    n = 1
    if others:
        stack = np.stack(others)  # (N, V, FEATURES)
        ends = np.concatenate([stack[..., START], stack[..., END]], axis=1)  # (N, 2V, 2)
        real = np.tile(stack[..., VALID] > 0, 2)  # (N, 2V)
        dist = np.where(real, np.linalg.norm(ends, axis=-1), np.inf).min(axis=1)
        keep = np.argsort(dist, kind="stable")[:max_polylines - 1]
        polylines[1:1 + len(keep)] = stack[keep]
        n += len(keep)
    valid = np.zeros(max_polylines, bool)
    valid[:n] = True
    return polylines, valid


def flag(polyline: np.ndarray) -> np.ndarray:
    """The polyline with its informative flag set on its real vectors."""
    polyline = polyline.copy()
    polyline[:, INFORMATIVE] = polyline[:, VALID]
    return polyline


class Forecasts(Dataset):
    """Prepared scenes: items are ((polylines, valid), future)."""

    def __init__(self, polylines: torch.Tensor, valid: torch.Tensor, future: torch.Tensor):
        self.polylines, self.valid, self.future = polylines, valid, future

    def __len__(self) -> int:
        return len(self.future)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return (self.polylines[i], self.valid[i]), self.future[i]
