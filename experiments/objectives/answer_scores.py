"""Visual question answering as classification over an answer vocabulary with soft targets.

Targets are (B, A): VQAv2's score per answer, min(#annotators who gave it / 3, 1), or a
one-hot (multi-hot) row where there is one (several accepted) answer. The loss is binary
cross-entropy per answer, scaled by the number of answers (as in the VQA literature: BUTD,
METER); ``val_acc`` is the mean score of the predicted answer - VQA accuracy, or exact-match
accuracy for one-hot targets. ``TypedAnswerScores`` adds the accuracy per question type.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from experiments.batches import forward, to_device


class AnswerScores:
    """Visual question answering as classification over an answer vocabulary with soft
    targets (B, A): VQAv2's score per answer, min(#annotators who gave it / 3, 1), or a
    one-hot row where there is one answer (exact match). The loss is binary cross-entropy
    per answer, scaled by the number of answers (as in the VQA literature: BUTD, METER);
    ``val_acc`` is the mean score of the predicted answer - VQA accuracy, or exact-match
    accuracy for one-hot targets."""

    def loss(self, logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, scores) * scores.shape[1]

    def type_rows(self, inputs) -> dict[str, torch.Tensor]:
        """Question type -> (B,) bool rows of that type, for per-type accuracy (none here)."""
        return {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]:
        model.eval()
        total, acc, top5, n = 0.0, 0.0, 0.0, 0
        typed: dict[str, list[float]] = {}
        for x, scores in loader:
            x, scores = to_device(x, device), scores.to(device)
            logits = forward(model, x)
            total += self.loss(logits, scores).item() * len(scores)
            hit = scores.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)  # (B,)
            acc += hit.sum().item()
            k = min(5, logits.shape[-1])
            top5 += scores.gather(1, logits.topk(k, -1).indices).amax(-1).sum().item()
            n += len(scores)
            for kind, rows in self.type_rows(x).items():
                sums = typed.setdefault(kind, [0.0, 0])
                sums[0] += hit[rows].sum().item()
                sums[1] += int(rows.sum())
        return {"val_loss": total / n, "val_acc": acc / n, "val_top5_acc": top5 / n,
                **{f"val_acc_{k}": h / max(m, 1) for k, (h, m) in typed.items()}}


ANSWER_SCORES = AnswerScores()


class TypedAnswerScores(AnswerScores):
    """``AnswerScores`` plus ``val_acc_<type>`` per question type; a question's type is the
    type word its ids (``inputs[1]``) contain: ``type_ids`` maps a type to its word's id."""

    def __init__(self, type_ids: dict[str, int]) -> None:
        self.type_ids = type_ids

    def type_rows(self, inputs) -> dict[str, torch.Tensor]:
        ids = inputs[1]
        return {kind: (ids == word).any(-1) for kind, word in self.type_ids.items()}
