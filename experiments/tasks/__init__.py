"""Importing this package registers every shipped task (one module each)."""

from experiments.tasks import digits, forecasting, images, pointcloud, video  # noqa: F401
