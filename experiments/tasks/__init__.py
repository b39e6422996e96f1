"""Importing this package registers every shipped task (one module each)."""

from experiments.tasks import (  # noqa: F401
    digits,
    forecasting,
    images,
    pointcloud,
    retrieval,
    video,
    vqa,
    vqa3d,
)
