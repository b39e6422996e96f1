"""Motion forecasting: a VectorNet-style encoder over polyline tokens, K=6 trajectories.

``road-graphs``: procedural road graphs (``experiments.datasets.road_graphs``), embedded;
``argoverse``: Argoverse-1's forecasting CSVs and vector maps from ``--data-dir``
(``experiments.datasets.argoverse``). Inputs are ``(polylines, valid)``, the target is the
agent's future (``experiments.datasets.polylines``); the objective is winner-takes-all over
the modes, scored by minADE (the task metric, lower is better), minFDE and the miss rate
(``experiments.objectives.trajectories``).
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.visual.vectornet import INFORMATIVE, VectorNet
from encoders.visual.vit import insert_after_last_block
from experiments.datasets.argoverse import ARGO_POLYLINES, build_argoverse, check_argoverse
from experiments.datasets.polylines import FUTURE, MAX_VECTORS
from experiments.datasets.road_graphs import build_road_graphs
from experiments.objectives.trajectories import TRAJECTORIES
from experiments.tasks.examples import random_scenes
from experiments.tasks.registry import Task, register_task, validation_examples

MODES = 6

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
    example=validation_examples(build_road_graphs),
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
    example=random_scenes(ARGO_POLYLINES, MAX_VECTORS, FUTURE),
))
