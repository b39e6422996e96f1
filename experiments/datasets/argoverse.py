"""Argoverse-1 motion forecasting from ``--data-dir``: its forecasting CSVs and vector maps.

Each CSV is one 5 s scenario (50 timestamps: 20 observed + 30 future) of tracks in the map
frame; the AGENT's track is predicted. A sample is put in the agent's frame (``polylines``),
with the lanes within 30 m split into 20-vector chunks, the other agents' observed histories,
and the 63 nearest polylines kept. The vector maps' XML structure follows argoverse-api's
``vector_map_loader``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from encoders.visual.vectornet import END, START, VALID
from experiments.datasets.base import DataError, data_root
from experiments.datasets.polylines import (
    FUTURE,
    HISTORY,
    agent_heading,
    assemble,
    flag,
    lane_polylines,
    to_agent_frame,
    trajectory_polyline,
)

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
