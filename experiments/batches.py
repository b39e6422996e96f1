"""Batches as every task's data yields them: ``(inputs, target)``, where ``inputs`` is a tensor
or a tuple of tensors (an image and its question tokens and their padding mask, say), passed
to the model as ``model(*inputs)``."""

from __future__ import annotations

import torch
from torch import nn

Batch = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]


def to_device(x: Batch, device) -> Batch:
    """A tensor, or every tensor of a tuple, on ``device``."""
    if isinstance(x, tuple | list):
        return type(x)(t.to(device) for t in x)
    return x.to(device)


def forward(model: nn.Module, x: Batch):
    """``model(x)``, or ``model(*x)`` for multi-part inputs."""
    return model(*x) if isinstance(x, tuple | list) else model(x)


def batch_len(y: Batch) -> int:
    return len(y[0]) if isinstance(y, tuple | list) else len(y)
