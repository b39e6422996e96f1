"""What a task optimises and how it is scored: its loss and its validation metrics, one module
per kind (``classification``, ``answer_scores``, ``trajectories``, ``retrieval``).

Classification is the default; tasks whose output is not one label per sample bring their
own ``Objective``. The training loop only calls ``loss``, ``evaluate`` and, where an objective
has one, ``val_loader``, so a new kind of task needs no change to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn


class Objective(Protocol):
    """A task's loss and validation metrics. ``evaluate`` returns ``val_*`` metrics and must
    include ``val_loss`` and the task's ``metric``.

    An objective MAY also define ``val_loader(self, dataset, **loader_kwargs) -> Iterable``:
    the training loop then validates on ``objective.val_loader(val_ds, **kw)`` instead of
    ``DataLoader(val_ds, **kw)`` (``kw``: batch_size, num_workers, pin_memory, ...; passed on
    to every DataLoader it builds) and hands that to ``evaluate`` every epoch, so it must be
    iterable again each time. Retrieval uses it to read each image once rather than once
    per caption (``retrieval.ContrastiveRetrieval.val_loader``): it changes how validation
    reads the data, never the numbers (``evaluate`` on a plain DataLoader of the same set
    scores the same; ``tests/test_objectives.py`` checks it). It is left out of the
    protocol's members so that objectives without it still satisfy ``Objective``: look it up
    with ``getattr(objective, "val_loader", None)``."""

    def loss(self, out, target: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]: ...
