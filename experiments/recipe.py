"""The optimisation recipe of a trial beyond AdamW's lr and weight decay: learning-rate
schedule with linear warm-up, label smoothing, and Mixup/CutMix (timm's), as the paper's ViT
recipe (DeiT's) uses them. The learning rate is a pure function of the position in training,
so a trial resumed from an epoch checkpoint continues the same schedule without saving one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from experiments.trial import Hyperparameters

MIN_LR_FRACTION = 0.01  # cosine decays to 1% of the peak


def lr_at(hp: Hyperparameters, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Peak ``effective_lr(hp)`` after ``hp.warmup_epochs`` of linear warm-up, then constant
    or cosine. A parameter group's ``lr_scale`` multiplies it (``experiments.param_groups``)."""
    peak = effective_lr(hp)
    t = epoch + (step + 1) / steps_per_epoch  # epochs done after this step
    if hp.warmup_epochs > 0 and t <= hp.warmup_epochs:
        return peak * t / hp.warmup_epochs
    if hp.schedule == "cosine":
        span = max(hp.epochs - hp.warmup_epochs, 1e-9)
        progress = min(max((t - hp.warmup_epochs) / span, 0.0), 1.0)
        floor = peak * MIN_LR_FRACTION
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return peak


def effective_lr(hp: Hyperparameters) -> float:
    """The peak lr: ``lr`` times the per-size scale the plan set (a preset's
    ``lr_scale_by_size``: the paper's lr/5 for OPT-125M and -350M)."""
    return hp.lr * hp.size_lr_scale


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_mixer(hp: Hyperparameters, num_classes: int):
    """timm's Mixup/CutMix (soft targets, smoothing folded in), or None."""
    if not (hp.mixup or hp.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=hp.mixup, cutmix_alpha=hp.cutmix,
                 label_smoothing=hp.label_smoothing, num_classes=num_classes)


def make_loss(hp: Hyperparameters, mixing: bool) -> Loss:
    if mixing:  # the mixer's soft targets (smoothing already folded in)
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=hp.label_smoothing)
