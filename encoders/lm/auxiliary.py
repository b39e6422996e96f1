"""The ``auxiliary`` control: the frozen LM block as a side branch used in training only
(Bai et al., AAAI 2025: "an auxiliary training scheme adds the LLM block as an extra
backpropagation path during training only (weighted loss), so inference needs no LLM
block"; ``../shared/PAPER.md``).

``AuxiliaryBranch`` sits where the block would (``--positions``), in the encoder's
``blocks`` list, and passes its tokens on unchanged: the main path is the encoder without a
block. While the model trains, it also runs the frozen block (with its two adapters) on the
same tokens and its own head on the result: a LayerNorm and a linear classifier on the
class token (the tokens' mean where the task has no class token). The trial adds
``aux_weight x`` the task's loss on those logits (``experiments.training``), so the branch's
gradient reaches the adapters and every encoder layer below it. In evaluation the branch
does nothing: the metric is the block-free encoder's, and so is its evaluation cost.

Where this departs from Bai et al. (no code; their head and weighting are not public): the
head is lmblocks' (the token a ViT's own head reads, normalised, one linear layer), the
loss the task's own, the weight constant; classification tasks only (a head needs classes).
The probe and the block's similarity read the branch (its block's input and output: it is
run for them, ``observing``); gradient coherence is of the evaluated model's loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class AuxiliaryBranch(nn.Module):
    """Identity on the main path; in training (or while ``observed``) the frozen ``block``
    on the side, its logits kept for the trial's loss (``take_logits``)."""

    def __init__(self, block: nn.Module, visual_dim: int) -> None:
        super().__init__()
        self.side = block
        self.norm = nn.LayerNorm(visual_dim)
        self.head: nn.Linear | None = None
        self.pool_token = True
        self.observed = False
        self._logits: torch.Tensor | None = None

    def attach_head(self, classes: int, prefix_tokens: int) -> None:
        """The branch's own classifier, once the task is known."""
        self.head = nn.Linear(self.norm.normalized_shape[0], classes)
        self.pool_token = prefix_tokens > 0

    def init_adapters(self, scheme: str) -> None:
        self.side.init_adapters(scheme)

    def forward(self, x: torch.Tensor, *args: object, padding_mask: torch.Tensor | None = None,
                **kwargs: object) -> torch.Tensor:
        if self.training or self.observed:
            out = self.side(x, padding_mask=padding_mask)
            if self.training and self.head is not None:
                if self.pool_token:
                    pooled = out[:, 0]
                elif padding_mask is not None:
                    keep = padding_mask.to(out.dtype).unsqueeze(-1)
                    pooled = (out * keep).sum(1) / keep.sum(1).clamp_min(1)
                else:
                    pooled = out.mean(1)
                self._logits = self.head(self.norm(pooled.to(self.norm.weight.dtype)))
        return x

    def take_logits(self) -> torch.Tensor | None:
        """The side head's logits of the last training forward (once: then cleared)."""
        logits, self._logits = self._logits, None
        return logits


@contextmanager
def observing(model: nn.Module) -> Iterator[None]:
    """While open, every auxiliary branch of ``model`` runs its block in evaluation too (for
    the probe and the similarity measure; its output still leaves the main path alone)."""
    branches = [m for m in model.modules() if isinstance(m, AuxiliaryBranch)]
    for b in branches:
        b.observed = True
    try:
        yield
    finally:
        for b in branches:
            b.observed = False


def with_auxiliary_loss(loss_fn, branch: AuxiliaryBranch, weight: float):
    """``loss_fn`` plus ``weight x loss_fn`` on the branch's logits of the same forward
    (float32; absent outside training, where the branch keeps none)."""
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        main = loss_fn(out, target)
        logits = branch.take_logits()
        return main if logits is None else main + weight * loss_fn(logits.float(), target)

    return loss
