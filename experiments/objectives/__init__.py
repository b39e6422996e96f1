"""What a task optimises and how it is scored: its loss and its validation metrics, one module
per kind (``classification``, ``answer_scores``, ``trajectories``, ``retrieval``).

Classification is the default; tasks whose output is not one label per sample bring their
own ``Objective``. The training loop only calls ``loss`` and ``evaluate``, so a new kind of
task needs no change to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn


class Objective(Protocol):
    """A task's loss and validation metrics. ``evaluate`` returns ``val_*`` metrics and must
    include ``val_loss`` and the task's ``metric``."""

    def loss(self, out, target: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]: ...
