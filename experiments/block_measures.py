"""Bai et al.'s two measures of a trial's model ("Frozen Language Models Are Gradient
Coherence Rectifiers in Vision Transformers", AAAI 2025), on the fixed probe batch: how
similar the inserted block's output is to the encoder block it follows, and how coherent the
per-sample gradients are. The paper finds the first predicts the gain of a block and a
position before training, and the frozen block raising the second.

Their exact definitions are not public (no code; ``../shared/PAPER.md``). lmblocks uses:
- similarity: linear CKA (Kornblith et al., ICML 2019) between the tokens entering the
  inserted module (the adjacent encoder block's output; at ``--positions start``, where no
  block precedes it, the token embedding) and the tokens leaving it; rows are
  the probe batch's real tokens, columns the features (the two widths may differ; CKA is
  invariant to rotation and isotropic scale). Without an inserted module (``none``): none.
- gradient coherence: the mean pairwise cosine similarity of the per-sample gradients of
  every trainable parameter over the probe batch (the model in eval mode: no dropout, running
  batch statistics; the task's own loss on each sample alone). It is computed as
  ``(|sum_i g_i/|g_i||^2 - n) / (n (n - 1))`` from n single-sample backward passes: the
  same numbers as ``torch.func``'s ``vmap(grad)``, without holding n gradients at once
  (a ViT-S's would be n x 88 MB). Not defined for a contrastive loss (its samples are one
  batch's pairs): none there.
Logged on every run as ``block_cka`` / ``grad_coherence`` each epoch and ``..._init``
before the first step.
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.lm.auxiliary import observing
from experiments.batches import Batch, forward
from experiments.probe import around_block, hook_around


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of (n, d1) and (n, d2) features of the same n samples, in [0, 1]."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).square().sum()
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


@torch.no_grad()
def block_similarity(model: nn.Module, inputs: Batch,
                     valid: torch.Tensor | None = None, prefix_tokens: int = 1) -> float | None:
    """Linear CKA between the inserted module's input and output tokens (``valid``:
    (B, n_tokens) bool after the prefix, False on padding); None without one."""
    if not hasattr(model, "blocks"):  # an encoder of another shape: nothing to measure
        return None
    before_module, after_module = around_block(model)
    if before_module is after_module:
        return None
    seen: dict[str, torch.Tensor] = {}
    hooks = hook_around(model, seen)
    was_training = model.training
    model.eval()
    try:
        with observing(model):  # an auxiliary branch runs its block for the measure
            forward(model, inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    x, y = seen["before"], seen["after"]
    keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if valid is not None:
        keep[:, prefix_tokens:] = valid.bool().to(x.device)
    return linear_cka(x[keep].float(), y[keep].float())


def gradient_coherence(model: nn.Module, loss, inputs: Batch, target: torch.Tensor
                       ) -> float | None:
    """Mean pairwise cosine of the per-sample gradients of ``model``'s trainable parameters
    (``loss(out, target)`` on each sample alone); None for fewer than 2 samples or no
    gradient. The parameters' ``.grad`` are left as they were."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = len(target)
    if n < 2 or not params:
        return None
    was_training = model.training
    model.eval()
    total = None
    try:
        for i in range(n):
            one = (tuple(t[i:i + 1] for t in inputs) if isinstance(inputs, tuple | list)
                   else inputs[i:i + 1])
            grads = torch.autograd.grad(loss(forward(model, one), target[i:i + 1]), params,
                                        allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float()
                              for g, p in zip(grads, params, strict=True)])
            size = flat.norm()
            if size == 0:
                return None
            total = flat / size if total is None else total + flat / size
    finally:
        model.train(was_training)
    return float((total.square().sum() - n) / (n * (n - 1)))


def block_measures(model: nn.Module, task, probe: tuple[Batch, torch.Tensor],
                   suffix: str = "") -> dict[str, float]:
    """Both measures on the probe batch ``(inputs, targets)`` of ``task`` (its
    ``experiments.tasks.registry.Task``), named with ``suffix`` (``_init``: before training);
    a measure that does not apply is left out."""
    from experiments.objectives.classification import CLASSIFICATION

    inputs, target = probe
    objective = task.objective or CLASSIFICATION
    valid = None
    if task.valid_tokens is not None:
        valid = task.valid_tokens(inputs if not isinstance(inputs, list) else tuple(inputs))
    out: dict[str, float] = {}
    similarity = block_similarity(model, inputs, valid, task.prefix_tokens)
    if similarity is not None:
        out[f"block_cka{suffix}"] = similarity
    if getattr(objective, "per_sample_loss", True):
        coherence = gradient_coherence(model, objective.loss, inputs, target)
        if coherence is not None:
            out[f"grad_coherence{suffix}"] = coherence
    return out
