"""Gradient accumulation: the recipe's global batch as k micro-batches per optimizer step.

``--batch-size`` is the global batch (the loader yields it, the schedule counts its steps);
``--micro-batch`` says how many of its samples go through the model at once. Each
micro-batch's mean loss is weighted by its share of the batch before its backward, so the
summed gradients are the whole batch's mean-loss gradient and one step over k micro-batches
is one step over the batch (``tests/test_accumulation.py``: float32, parameters to 1e-6).

That holds for a model whose samples do not meet inside the forward. Where they do, k
micro-batches train a different model than the batch would, as they do in timm's loop
(``--grad-accum-steps``) and across the GPUs of DeiT's own 8-GPU run:

- BatchNorm (``digits-convstem``'s stem, the point encoder's mini-PointNet): statistics per
  micro-batch, and the running averages move k times a step;
- an in-batch loss (retrieval's contrastive loss, ``per_sample_loss = False``): each
  micro-batch's captions are the negatives of its images, k times fewer of them;
- Mixup/CutMix draw one mix per micro-batch (timm's loop under accumulation; one per GPU's
  batch in DeiT's), so a micro-batch must be even.

A run records which of these apply (``accumulation_exact``). Label smoothing, clipping (of
the summed gradients, once a step), the EMA (once a step) and float16's scaler (each
micro-batch's loss scaled, unscaled and stepped once) act per optimizer step, as in timm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from experiments.batches import Batch
from experiments.memory_model import divisors, micro_batch_multiple, planned_micro_batch
from experiments.trial import TrialSpec


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """``batch`` (a tensor, or a tuple of batch-major tensors) in chunks of ``size`` along
    dim 0; the last chunk holds the rest."""
    if isinstance(batch, tuple | list):
        return [type(batch)(parts) for parts in zip(*(t.split(size) for t in batch),
                                                      strict=True)]
    return list(batch.split(size))


def smaller_micro_batch(batch_size: int, micro: int, multiple_of: int = 1) -> int | None:
    """The next micro-batch below ``micro`` that divides the batch (and is a multiple of
    ``multiple_of``), at most half of it: out-of-memory's retry; None when there is none."""
    options = [d for d in divisors(batch_size) if d <= micro // 2 and d % multiple_of == 0]
    return max(options, default=None)


def trial_micro_batch(trial: TrialSpec, gpu_bytes: float | None) -> int:
    """The micro-batch a trial starts with (``memory_model.planned_micro_batch``); where the
    estimate fits nothing, the smallest, for the first step's out-of-memory to have the word."""
    return planned_micro_batch(trial, gpu_bytes) or micro_batch_multiple(trial)


def exactness(model: nn.Module, per_sample_loss: bool, mixing: bool) -> str:
    """``exact``, or what makes k micro-batches differ from the whole batch (module
    docstring): recorded on the run, so a reader of accumulated results knows."""
    reasons = []
    norms = sorted({type(m).__name__ for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    if norms:
        reasons.append(f"{'/'.join(norms)} statistics per micro-batch")
    if not per_sample_loss:
        reasons.append("in-batch loss over each micro-batch")
    if mixing:
        reasons.append("one Mixup/CutMix draw per micro-batch")
    return "; ".join(reasons) or "exact"


def out_of_memory_retry(batch_size: int, micro: int, multiple_of: int,
                        clear: Callable[[], None]) -> int:
    """After an out-of-memory at ``micro``: the smaller micro-batch to try, with the step's
    gradients and the allocator's cache cleared by ``clear``; re-raises when there is none."""
    smaller = smaller_micro_batch(batch_size, micro, multiple_of)
    if smaller is None:
        raise torch.OutOfMemoryError(
            f"out of memory at a micro-batch of {micro} (the smallest this batch of "
            f"{batch_size} allows): the trial does not fit this GPU")
    clear()
    return smaller
