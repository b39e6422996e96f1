"""Batches as every task's data yields them: ``(inputs, target)``, where ``inputs`` is a tensor
or a tuple of tensors (an image and its question tokens and their padding mask, say), passed
to the model as ``model(*inputs)``."""

from __future__ import annotations

import torch
from torch import nn

Batch = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]


def to_device(x: Batch, device, non_blocking: bool = False) -> Batch:
    """A tensor, or every tensor of a tuple, on ``device`` (``non_blocking``: from pinned
    memory, the copy overlaps the GPU's work instead of waiting for it)."""
    if isinstance(x, tuple | list):
        return type(x)(t.to(device, non_blocking=non_blocking) for t in x)
    return x.to(device, non_blocking=non_blocking)


def as_float32(out):
    """Floating outputs in float32: under bf16 autocast a model's outputs are bf16, and a
    loss or a metric (a displacement error in metres, a recall over thousands of pairs) must
    not be computed at bf16's three significant digits. A no-op for float32 outputs."""
    if isinstance(out, tuple | list):
        return type(out)(as_float32(t) for t in out)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != torch.float32:
        return out.float()
    return out


def forward(model: nn.Module, x: Batch):
    """``model(x)``, or ``model(*x)`` for multi-part inputs; floating outputs in float32."""
    return as_float32(model(*x) if isinstance(x, tuple | list) else model(x))


def batch_len(y: Batch) -> int:
    return len(y[0]) if isinstance(y, tuple | list) else len(y)
