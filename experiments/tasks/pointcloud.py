"""Point-cloud classification: a Point-BERT-style encoder (``encoders.visual.point_encoder``)
over procedural shapes (``shapes3d``, embedded) or ModelNet40 / ScanObjectNN (h5, from
``--data-dir``). The encoder reads x, y, z; the clouds' object flag tells the
information-filtering probe which tokens are informative (a patch whose centre lies on the
object).
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.visual.point_encoder import PointTransformer, farthest_point_sample
from encoders.visual.vit import insert_after_last_block
from experiments.datasets.point_h5 import POINTS as H5_POINTS
from experiments.datasets.point_h5 import build_real
from experiments.datasets.point_shapes import SHAPES, build_shapes
from experiments.tasks.examples import random_clouds
from experiments.tasks.registry import Task, register_task, validation_examples

GROUPS = 16
K = 16
EMBED_DIM = 64


def model_builder(num_classes: int, groups: int):
    def build_model(block: nn.Module | None) -> nn.Module:
        enc = PointTransformer(num_classes=num_classes, groups=groups, k=K, embed_dim=EMBED_DIM)
        return insert_after_last_block(enc, block)

    return build_model


def object_patches(groups: int):
    def informative(clouds: torch.Tensor) -> torch.Tensor:
        """(B, N, 4) -> (B, G): the patch's centre (the encoder's own FPS) is on the object."""
        idx = farthest_point_sample(clouds[..., :3].float(), groups)
        return clouds[torch.arange(len(clouds)).unsqueeze(1), idx, 3] > 0.5

    return informative


SHAPES3D = register_task(Task(
    name="shapes3d",
    description="procedural 3D primitives with clutter (embedded), Point-BERT-style encoder",
    visual_dim=EMBED_DIM,
    build_data=build_shapes,
    build_model=model_builder(len(SHAPES), GROUPS),
    informative_tokens=object_patches(GROUPS),
    chance=1 / len(SHAPES),
    num_classes=len(SHAPES),
    example=validation_examples(build_shapes),
))

for _name, _classes in (("modelnet40", 40), ("scanobjectnn", 15)):
    _build, _check = build_real(_name)
    register_task(Task(
        name=_name,
        description=f"{_name} point clouds (h5, 1024 points), Point-BERT-style encoder",
        visual_dim=EMBED_DIM,
        build_data=_build,
        build_model=model_builder(_classes, 64),
        informative_tokens=object_patches(64),
        check_data=_check,
        chance=1 / _classes,
        num_classes=_classes,
        example=random_clouds(H5_POINTS, _classes),
    ))

