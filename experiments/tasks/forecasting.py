"""Motion forecasting: procedurally generated road graphs (embedded) and Argoverse-1 (its
forecasting CSVs and vector maps, from ``--data-dir``), with a VectorNet-style encoder.

A sample is one agent-centric scene: the origin is the agent's last observed position and
the x axis its heading; everything is in metres. Inputs are ``(polylines, valid)``:
polylines (P, V, FEATURES) in ``encoders.vectornet``'s vector layout (agent history first,
then lanes and other agents, nearest first, padded) and the polyline mask (P,); the target is
the agent's future (FUTURE, 2). The model predicts K=6 trajectories and their logits; the
loss is winner-takes-all (smooth-L1 on the mode with the lowest average displacement, plus
cross-entropy toward that mode) and validation reports minADE, minFDE and the miss rate
(min final displacement over the modes above 2 m, Argoverse's definition), at K=6.

The embedded default (``road-graphs``) is built so that the map matters: Argoverse timing
(10 Hz, 20 steps observed, 30 predicted) on straight roads, curves that begin after the
agent's current position, and intersections with a random subset of left/straight/right
exits, among distractor lanes (an oncoming lane, a neighbouring lane, a crossing street).
The agent follows its lane at a random speed and acceleration, drifting across it, and
takes one of the existing exits at random, so the history alone cannot tell the future: the
same history goes on differently under a different lane layout. Scenes come from fixed seeds (train and
validation are different draws) and are cached, so every trial sees the same data.
1600 training and 400 validation scenes (about 4 s to generate): on one shared CPU core an
8-epoch trial of the preset takes about 26 s without a block (``none``: val minADE 0.78 m,
against 2.14 m for constant velocity, and 1.47 m for the same model with the lanes taken out
of its inputs) and about 70 s with MiniLM's layer, whose 384-wide attention over the 16
polyline tokens is then most of the compute.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from encoders.vectornet import (
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
    VectorNet,
    constant_velocity,
)
from encoders.vit import insert_after_last_block
from experiments.objectives import forward, to_device
from experiments.tasks.registry import DataError, Task, data_root, register_task

HZ, HISTORY, FUTURE = 10, 20, 30  # Argoverse-1: 2 s observed, 3 s predicted
MODES = 6
MISS_THRESHOLD = 2.0  # metres, on the final position (Argoverse)
MAX_VECTORS = 20  # per polyline: a history's 19 steps; lanes are split into such chunks
LANE_SPACING = 2.0  # metres between the embedded lanes' resampled points
HEADING_LAG = 5  # steps over which the agent's heading is measured (0.5 s)

# --- polylines: the shared preprocessing ---------------------------------------------------


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


# --- the embedded road graphs --------------------------------------------------------------

EXITS = ("left", "straight", "right")
KINDS = ("straight", "curve", "intersection")
KIND_P = (0.2, 0.35, 0.45)
LANE_WIDTH = 3.5
BACK = 50.0  # metres of the agent's lane behind its current position
DENSE = 0.5  # metres between the generator's centerline points, before resampling
ROAD_POLYLINES = 16  # agent + lane chunks: a scene has at most 14, none is dropped


@dataclass(frozen=True)
class SceneParams:
    """Everything that makes one scene; the history depends only on the speed profile, the
    noise seed and the frame, so changing the layout ahead keeps the history as it was."""

    kind: str
    ahead: float  # metres from the current position to the curve's start or the stop line
    curve: tuple[float, float]  # (signed angle, rad, + left; radius, m)
    exits: tuple[str, ...]  # the intersection's exits
    turns: tuple[tuple[float, float], tuple[float, float]]  # (angle, radius) left, right
    choice: str  # the exit taken
    speed: float  # m/s at the last observed step
    accel: float  # m/s^2
    noise_seed: int
    rotation: float  # the map frame: the scene is rotated and moved into it
    offset: tuple[float, float]


def draw_params(rng: np.random.Generator) -> SceneParams:
    """One scene's parameters (a choice among the exits is drawn whatever the kind)."""
    kind = KINDS[rng.choice(len(KINDS), p=KIND_P)]
    exits = tuple(e for e in EXITS if rng.random() < 0.6) or (EXITS[rng.integers(3)],)
    angle = rng.uniform(0.4, 1.6) * rng.choice([-1.0, 1.0])
    return SceneParams(
        kind=kind,
        ahead=float(rng.uniform(2.0, 25.0)),
        curve=(float(angle), float(rng.uniform(15.0, 45.0))),
        exits=exits,
        turns=((float(rng.uniform(1.1, 2.0)), float(rng.uniform(9.0, 15.0))),
               (float(rng.uniform(1.1, 2.0)), float(rng.uniform(5.0, 9.0)))),
        choice=str(rng.choice(exits)),
        speed=float(rng.uniform(4.0, 14.0)),
        accel=float(rng.uniform(-0.8, 0.8)),
        noise_seed=int(rng.integers(2**31)),
        rotation=float(rng.uniform(-np.pi, np.pi)),
        offset=(float(rng.uniform(-500, 500)), float(rng.uniform(-500, 500))),
    )


def straight(start: np.ndarray, heading: float, length: float) -> np.ndarray:
    t = np.linspace(0.0, length, max(round(length / DENSE), 1) + 1)
    return start + t[:, None] * np.array([math.cos(heading), math.sin(heading)])


def arc(start: np.ndarray, heading: float, angle: float, radius: float) -> np.ndarray:
    """A circular arc from ``start`` along ``heading``, turning by ``angle`` (+ left)."""
    n = max(round(abs(angle) * radius / DENSE), 1) + 1
    side = math.copysign(1.0, angle)
    centre = start + side * radius * np.array([-math.sin(heading), math.cos(heading)])
    phi = heading - side * math.pi / 2 + np.linspace(0.0, angle, n)
    return centre + radius * np.stack([np.cos(phi), np.sin(phi)], 1)


def end_heading(points: np.ndarray) -> float:
    d = points[-1] - points[-2]
    return float(math.atan2(d[1], d[0]))


def arc_length(points: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])


def resample(points: np.ndarray, spacing: float = LANE_SPACING) -> np.ndarray:
    s = arc_length(points)
    at = np.append(np.arange(0.0, s[-1], spacing), s[-1])
    if len(at) > 2 and at[-1] - at[-2] < 0.25 * spacing:
        at = np.delete(at, -2)  # no stub at the end
    return np.stack([np.interp(at, s, points[:, 0]), np.interp(at, s, points[:, 1])], 1)


def offset_line(points: np.ndarray, by: float) -> np.ndarray:
    """The line ``by`` metres to the left of a polyline (the lane next to it)."""
    d = np.gradient(points, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return points + by * np.stack([-d[:, 1], d[:, 0]], 1)


@dataclass(frozen=True)
class Lane:
    """A lane centerline of the road graph, with its attributes as in Argoverse's map."""

    points: np.ndarray  # dense centerline (N, 2), road frame
    intersection: float = 0.0
    turn: float = 0.0
    route_start: float | None = None  # arc length along the agent's route where it begins


def road_graph(p: SceneParams) -> tuple[list[Lane], np.ndarray]:
    """The lanes of a scene (the agent's route first) and the route as one dense line, in the
    road frame: the agent's current position near the origin, heading +x; right-hand traffic."""
    origin = np.array([-BACK, 0.0])
    entry = straight(origin, 0.0, BACK + p.ahead)
    distractors: list[Lane] = []
    if p.kind == "straight":
        route = [Lane(straight(origin, 0.0, BACK + 70.0))]
        distractors.append(Lane(offset_line(route[0].points, -LANE_WIDTH)))  # the next lane
    elif p.kind == "curve":
        angle, radius = p.curve
        bend = arc(entry[-1], 0.0, angle, radius)
        route = [Lane(entry), Lane(bend), Lane(straight(bend[-1], end_heading(bend), 60.0))]
    elif p.kind == "intersection":
        route = [Lane(entry)]
        turns = dict(zip(("left", "right"), p.turns, strict=True))
        for name in p.exits:
            if name == "straight":
                link, sign = straight(entry[-1], 0.0, 14.0), 0.0
            else:
                sign = 1.0 if name == "left" else -1.0
                angle, radius = turns[name]
                link = arc(entry[-1], 0.0, sign * angle, radius)
            lanes = [Lane(link, intersection=1.0, turn=sign),
                     Lane(straight(link[-1], end_heading(link), 38.0))]
            if name == p.choice:
                route += lanes
            else:
                distractors += lanes
        cross = entry[-1, 0] + 7.0  # a crossing street, one lane each way
        for side in (1.0, -1.0):
            foot = np.array([cross + side * LANE_WIDTH / 2, -35.0 * side])
            distractors.append(Lane(straight(foot, side * math.pi / 2, 70.0)))
    else:
        raise ValueError(f"unknown scene kind {p.kind!r}; valid: {', '.join(KINDS)}")
    whole = np.concatenate([route[0].points, *(lane.points[1:] for lane in route[1:])])
    oncoming = offset_line(entry if p.kind == "intersection" else whole, LANE_WIDTH)[::-1]
    starts = np.cumsum([0.0] + [arc_length(lane.points)[-1] for lane in route[:-1]])
    route = [replace(lane, route_start=float(s)) for lane, s in zip(route, starts, strict=True)]
    return [*route, Lane(oncoming), *distractors], whole


@dataclass(frozen=True)
class Scene:
    polylines: np.ndarray  # (ROAD_POLYLINES, MAX_VECTORS, FEATURES)
    valid: np.ndarray  # (ROAD_POLYLINES,)
    future: np.ndarray  # (FUTURE, 2), agent frame
    history: np.ndarray  # (HISTORY, 2), agent frame
    on_lane: np.ndarray  # (FUTURE, 2): the route's centerline at the agent's true progress


_APART = np.subtract.outer(np.arange(HISTORY + FUTURE), np.arange(HISTORY + FUTURE))
_AR = np.tril(0.95 ** np.maximum(_APART, 0))  # (steps, steps): the AR(1) filter as a matrix


def render(p: SceneParams) -> Scene:
    """The scene of ``p`` in the agent's frame."""
    lanes, route = road_graph(p)
    rng = np.random.default_rng(p.noise_seed)
    tau = (np.arange(HISTORY + FUTURE) - (HISTORY - 1)) / HZ  # 0 at the last observed step
    s = BACK + p.speed * tau + 0.5 * p.accel * tau**2
    # a slow drift across the lane: AR(1), lateral[t] = 0.95 lateral[t-1] + noise[t]
    noise = np.append(rng.normal(0.0, 0.3), rng.normal(0.0, 0.05, len(tau) - 1))
    lateral = np.clip(_AR @ noise, -0.6, 0.6)
    route_s = arc_length(route)
    centre = np.stack([np.interp(s, route_s, route[:, k]) for k in (0, 1)], 1)
    tangent = np.stack([np.interp(s, route_s, np.gradient(route[:, k])) for k in (0, 1)], 1)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    track = centre + lateral[:, None] * normal + rng.normal(0.0, 0.02, centre.shape)

    c, si = math.cos(p.rotation), math.sin(p.rotation)
    rot, shift = np.array([[c, si], [-si, c]]), np.array(p.offset)  # row-vector rotation

    def to_map(x: np.ndarray) -> np.ndarray:
        return x @ rot + shift

    track, centre = to_map(track), to_map(centre)
    origin = track[HISTORY - 1]
    heading = agent_heading(track[:HISTORY])

    def frame(x: np.ndarray) -> np.ndarray:
        return to_agent_frame(x, origin, heading)

    track, centre = frame(track), frame(centre)
    agent = flag(trajectory_polyline(track[:HISTORY], np.ones(HISTORY, bool), agent=True))
    covered = (s[0], s[-1])  # the route's stretch the agent drives, observed and future
    chunks = []
    for lane in lanes:
        pts = resample(lane.points)
        lane_s = None if lane.route_start is None else lane.route_start + arc_length(pts)
        for i, chunk in enumerate(lane_polylines(frame(to_map(pts)), lane.intersection,
                                                 lane.turn)):
            if lane_s is not None:
                lo, hi = lane_s[i * MAX_VECTORS], lane_s[min((i + 1) * MAX_VECTORS, len(pts) - 1)]
                if lo <= covered[1] and hi >= covered[0]:
                    chunk = flag(chunk)
            chunks.append(chunk)
    polylines, valid = assemble(agent, chunks, ROAD_POLYLINES)
    return Scene(polylines, valid, track[HISTORY:].astype(np.float32),
                 track[:HISTORY].astype(np.float32), centre[HISTORY:].astype(np.float32))


def make_road_graphs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, ROAD_POLYLINES, MAX_VECTORS, FEATURES) polylines, (n, ROAD_POLYLINES) masks and
    (n, FUTURE, 2) futures, from ``seed``."""
    rng = np.random.default_rng(seed)
    scenes = [render(draw_params(rng)) for _ in range(n)]
    return (torch.from_numpy(np.stack([s.polylines for s in scenes])),
            torch.from_numpy(np.stack([s.valid for s in scenes])),
            torch.from_numpy(np.stack([s.future for s in scenes])))


class Forecasts(Dataset):
    """Prepared scenes: items are ((polylines, valid), future)."""

    def __init__(self, polylines: torch.Tensor, valid: torch.Tensor, future: torch.Tensor):
        self.polylines, self.valid, self.future = polylines, valid, future

    def __len__(self) -> int:
        return len(self.future)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return (self.polylines[i], self.valid[i]), self.future[i]


@cache
def _road_graphs() -> tuple[Forecasts, Forecasts]:
    return Forecasts(*make_road_graphs(1600, seed=1)), Forecasts(*make_road_graphs(400, seed=2))


def build_road_graphs(data_dir: str | Path | None = None) -> tuple[Forecasts, Forecasts]:
    return _road_graphs()


# --- the objective -------------------------------------------------------------------------


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


# --- Argoverse-1 ---------------------------------------------------------------------------

ARGO_LAYOUT = ("train/data/*.csv and val/data/*.csv (Argoverse-1 forecasting: TIMESTAMP, "
               "TRACK_ID, OBJECT_TYPE, X, Y, CITY_NAME; 50 steps each) and "
               "map_files/pruned_argoverse_<CITY>_<ID>_vector_map.xml")
ARGO_RADIUS = 30.0  # metres: lanes whose centerline comes this close to the agent
ARGO_POLYLINES = 64  # agent + nearest lane chunks and other agents
ON_PATH = 1.5  # metres: a lane the agent's future runs along, within this, is on its path


@dataclass(frozen=True)
class LaneMap:
    """One city's lane centerlines (map frame) and a flat index of their points."""

    centerlines: list[np.ndarray]
    attributes: np.ndarray  # (n_lanes, 3): is_intersection, turn (+1 left, -1 right), control
    points: np.ndarray  # (N, 2) every centerline point
    lane_of_point: np.ndarray  # (N,)


@cache
def load_lane_map(path: Path) -> LaneMap:
    """Parse an Argoverse vector map: ``<node id x y/>`` elements and ``<way lane_id>``
    elements listing their centerline's ``<nd ref/>`` and ``<tag k v/>`` attributes."""
    root = ET.parse(path).getroot()
    nodes = {int(n.attrib["id"]): (float(n.attrib["x"]), float(n.attrib["y"]))
             for n in root.iter("node")}
    centerlines, attributes = [], []
    for way in root.iter("way"):
        try:
            line = np.array([nodes[int(nd.attrib["ref"])] for nd in way.iter("nd")])
        except KeyError as e:
            raise DataError(f"{path}: lane {way.attrib.get('lane_id')} refers to missing "
                            f"node {e.args[0]}") from None
        if len(line) < 2:
            continue
        tags = {t.attrib["k"]: t.attrib["v"] for t in way.iter("tag")}
        centerlines.append(line)
        attributes.append((tags.get("is_intersection") == "True",
                           {"LEFT": 1.0, "RIGHT": -1.0}.get(tags.get("turn_direction", ""), 0.0),
                           tags.get("has_traffic_control") == "True"))
    if not centerlines:
        raise DataError(f"{path}: no <way> lanes with centerline nodes")
    return LaneMap(centerlines, np.array(attributes, np.float32), np.concatenate(centerlines),
                   np.repeat(np.arange(len(centerlines)), [len(c) for c in centerlines]))


def city_maps(root: Path) -> dict[str, Path]:
    """CITY -> its vector map file, from map_files/pruned_argoverse_<CITY>_<ID>_vector_map.xml."""
    return {p.name.split("_")[2]: p
            for p in sorted((root / "map_files").glob("pruned_argoverse_*_vector_map.xml"))}


def argoverse_files(data_dir: str | Path | None, split: str) -> tuple[list[Path], dict[str, Path]]:
    """A split's CSVs and the city maps, or DataError naming the expected layout."""
    root = data_root("argoverse", data_dir, ARGO_LAYOUT)
    files = sorted((root / split / "data").glob("*.csv"))
    if not files:
        raise DataError(f"--data-dir {str(data_dir)!r}: no {split}/data/*.csv for task "
                        f"'argoverse'; expected {ARGO_LAYOUT}")
    maps = city_maps(root)
    if not maps:
        raise DataError(f"--data-dir {str(data_dir)!r}: no map_files/pruned_argoverse_*_vector_"
                        f"map.xml for task 'argoverse'; expected {ARGO_LAYOUT}")
    return files, maps


def on_path(chunk: np.ndarray, future: np.ndarray) -> bool:
    """Does the future (FUTURE, 2) run along this lane chunk: within ON_PATH metres of one of
    its vectors while moving in the vector's direction?"""
    real = chunk[chunk[:, VALID] > 0]
    a, b = real[:, START], real[:, END]  # (S, 2)
    ab = b - a
    t = np.clip(((future[:, None] - a) * ab).sum(-1) / np.maximum((ab**2).sum(-1), 1e-9), 0, 1)
    dist = np.linalg.norm(future[:, None] - (a + t[..., None] * ab), axis=-1)  # (T, S)
    motion = np.gradient(future, axis=0)  # (T, 2)
    cos = (motion[:, None] * ab).sum(-1) / np.maximum(
        np.linalg.norm(motion, axis=-1)[:, None] * np.linalg.norm(ab, axis=-1), 1e-9)
    moving = np.linalg.norm(motion, axis=-1)[:, None] > 0.05
    return bool(((dist < ON_PATH) & ((cos > 0.7) | ~moving)).any())


def argoverse_sample(path: Path, maps: dict[str, Path]) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """One forecasting CSV -> polylines (ARGO_POLYLINES, MAX_VECTORS, FEATURES), their mask,
    and the agent's future (FUTURE, 2), in the agent's frame."""
    import pandas as pd

    df = pd.read_csv(path)
    times = np.sort(df["TIMESTAMP"].unique())
    if len(times) < HISTORY + FUTURE:
        raise DataError(f"{path}: {len(times)} timestamps; a train/val file has "
                        f"{HISTORY + FUTURE} ({HISTORY} observed + {FUTURE} future)")
    df = df.assign(step=np.searchsorted(times, df["TIMESTAMP"]))
    city = str(df["CITY_NAME"].iloc[0])
    if city not in maps:
        raise DataError(f"{path}: no map for city {city!r}; expected map_files/pruned_argoverse_"
                        f"{city}_<ID>_vector_map.xml (found: {', '.join(sorted(maps))})")
    agent_rows = df[df["OBJECT_TYPE"] == "AGENT"].sort_values("step")
    if agent_rows["step"].tolist()[:HISTORY + FUTURE] != list(range(HISTORY + FUTURE)):
        raise DataError(f"{path}: the AGENT track must have all {HISTORY + FUTURE} steps")
    agent = agent_rows[["X", "Y"]].to_numpy(np.float64)[:HISTORY + FUTURE]
    origin, heading = agent[HISTORY - 1], agent_heading(agent[:HISTORY])
    track = to_agent_frame(agent, origin, heading)
    future = track[HISTORY:]
    others = []
    observed = df[(df["OBJECT_TYPE"] != "AGENT") & (df["step"] < HISTORY)]
    for _, rows in observed.groupby("TRACK_ID"):
        xy, seen = np.zeros((HISTORY, 2)), np.zeros(HISTORY, bool)
        xy[rows["step"]], seen[rows["step"]] = rows[["X", "Y"]].to_numpy(np.float64), True
        if (seen[:-1] & seen[1:]).any():
            others.append(trajectory_polyline(to_agent_frame(xy, origin, heading), seen, False))
    lane_map = load_lane_map(maps[city])
    near = np.hypot(*(lane_map.points - origin).T) < ARGO_RADIUS
    for lane in np.unique(lane_map.lane_of_point[near]):
        line = to_agent_frame(lane_map.centerlines[lane], origin, heading)
        for chunk in lane_polylines(line, *lane_map.attributes[lane]):
            others.append(flag(chunk) if on_path(chunk, future) else chunk)
    agent_line = flag(trajectory_polyline(track[:HISTORY], np.ones(HISTORY, bool), agent=True))
    polylines, valid = assemble(agent_line, others, ARGO_POLYLINES)
    return polylines, valid, future.astype(np.float32)


class ArgoverseScenes(Dataset):
    """Forecasting CSVs read on demand (the maps once per city); items as ``Forecasts``'."""

    def __init__(self, files: list[Path], maps: dict[str, Path]) -> None:
        self.files, self.maps = files, maps

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        polylines, valid, future = argoverse_sample(self.files[i], self.maps)
        return (torch.from_numpy(polylines), torch.from_numpy(valid)), torch.from_numpy(future)


def build_argoverse(data_dir: str | Path | None = None) -> tuple[ArgoverseScenes, ArgoverseScenes]:
    return (ArgoverseScenes(*argoverse_files(data_dir, "train")),
            ArgoverseScenes(*argoverse_files(data_dir, "val")))


def check_argoverse(data_dir: str | Path | None) -> None:
    argoverse_files(data_dir, "train")
    argoverse_files(data_dir, "val")


# --- models, probe, registration -----------------------------------------------------------

ROAD_WIDTH, ARGO_WIDTH = 64, 128


def vectornet(width: int, depth: int, num_heads: int):
    def build_model(block: nn.Module | None) -> nn.Module:
        net = VectorNet(width=width, subgraph_layers=3, depth=depth, num_heads=num_heads,
                        modes=MODES, future_steps=FUTURE)
        return insert_after_last_block(net, block)

    return build_model


def informative_polylines(inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(polylines (B, P, V, FEATURES), valid (B, P)) -> (B, P): polylines the future follows."""
    polylines, valid = inputs
    return (polylines[..., INFORMATIVE].amax(-1) > 0.5) & valid.bool()


def valid_polylines(inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return inputs[1].bool()


# The constant-velocity baseline's minADE on the road-graphs validation set
# (``baseline_min_ade(build_road_graphs()[1])``; a test keeps it in step with the generator).
ROAD_GRAPHS_CV_MIN_ADE = 2.14

register_task(Task(
    name="road-graphs",
    description="procedural road graphs (embedded): forecast 3 s from 2 s, the lanes decide",
    visual_dim=ROAD_WIDTH,
    build_data=build_road_graphs,
    build_model=vectornet(ROAD_WIDTH, depth=2, num_heads=4),
    metric="val_minADE",
    mode="min",
    informative_tokens=informative_polylines,
    valid_tokens=valid_polylines,
    prefix_tokens=0,
    chance=ROAD_GRAPHS_CV_MIN_ADE,
    objective=TRAJECTORIES,
))

register_task(Task(
    name="argoverse",
    description="Argoverse-1 motion forecasting (CSVs + vector maps), VectorNet-style encoder",
    visual_dim=ARGO_WIDTH,
    build_data=build_argoverse,
    build_model=vectornet(ARGO_WIDTH, depth=3, num_heads=4),
    metric="val_minADE",
    mode="min",
    informative_tokens=informative_polylines,
    valid_tokens=valid_polylines,
    prefix_tokens=0,
    check_data=check_argoverse,
    # Unknown without the data: measure it with baseline_min_ade(val) (Argoverse's paper
    # reports the constant-velocity baseline on its test set, in a different frame).
    chance=0.0,
    objective=TRAJECTORIES,
))
