"""Importing this package registers every shipped task (one module each)."""

from experiments.tasks import digits, pointcloud  # noqa: F401
