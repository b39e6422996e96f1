"""The recipe's regularisers beyond the loss, all timm's: stochastic depth in the encoder's
timm blocks (``drop_path``), gradient-norm clipping (``clip_grad``) and an exponential moving
average of the weights (``ema_decay``, timm's ``ModelEmaV3``) evaluated alongside the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from experiments.trial import Hyperparameters

EMA_PREFIX = "ema_"  # the EMA's validation metrics: ema_val_acc, ...
# What a run records of the recipe as applied (params, once): the peak lr the schedule used
# and how many of the encoder's blocks took stochastic depth.
RECIPE_PARAMS = ("effective_lr", "drop_path_blocks")


def timm_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's timm transformer blocks (``drop_path1``/``drop_path2`` residual branches),
    in module order; an inserted LM block is not one."""
    return [m for m in model.modules() if hasattr(m, "drop_path1") and hasattr(m, "drop_path2")]


def apply_drop_path(model: nn.Module, rate: float, where: str = "model") -> int:
    """timm's stochastic-depth decay rule over the model's timm blocks: block i of n drops
    its residual branches with probability ``rate * i / (n - 1)`` (timm's ViT builds them
    so from ``drop_path_rate``). Returns how many blocks there are; raises ValueError when
    ``rate`` > 0 and the encoder has none (it would not apply)."""
    from timm.layers import DropPath, calculate_drop_path_rates

    blocks = timm_blocks(model)
    if rate <= 0:
        return len(blocks)
    if not blocks:
        raise ValueError(f"drop_path {rate} does not apply to {where}: its encoder has no "
                         "timm blocks; valid: 0")
    for block, p in zip(blocks, calculate_drop_path_rates(rate, len(blocks)), strict=True):
        block.drop_path1 = DropPath(p) if p > 0 else nn.Identity()
        block.drop_path2 = DropPath(p) if p > 0 else nn.Identity()
    return len(blocks)


def clipper(optimizer: torch.optim.Optimizer, max_norm: float) -> Callable[[], None] | None:
    """Clip the global grad norm of the optimizer's parameters to ``max_norm`` (timm's
    ``dispatch_clip_grad``); None when off. With a GradScaler, unscale before calling it."""
    if not max_norm:
        return None
    from timm.utils import dispatch_clip_grad

    params = [p for g in optimizer.param_groups for p in g["params"]]
    return lambda: dispatch_clip_grad(params, max_norm, mode="norm")


def make_ema(model: nn.Module, hp: Hyperparameters, restored: dict | None = None):
    """timm's ``ModelEmaV3`` of ``model`` (constant decay, as DeiT's ``ModelEma``; updated
    after every optimizer step), or None when ``ema_decay`` is 0. ``restored``: the EMA's
    trainable tensors from a checkpoint (frozen ones are the model's, re-read)."""
    if not hp.ema_decay:
        return None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=hp.ema_decay)
    if restored:
        ema.module.load_state_dict(restored, strict=False)
    return ema


def ema_scores(ema, evaluate: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
    """The EMA weights' validation scores, prefixed ``ema_`` (empty when there is no EMA)."""
    if ema is None:
        return {}
    return {f"{EMA_PREFIX}{k}": v for k, v in evaluate(ema.module).items()}
