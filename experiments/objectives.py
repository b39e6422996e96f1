"""What a task optimises and how it is scored: its loss and its validation metrics.

Classification (cross-entropy; top-1, mean-class and top-5 accuracy) is the default;
tasks whose output is not one label per sample (trajectories, answer scores, embedding
pairs) bring their own ``Objective``. The training loop only calls ``loss`` and
``evaluate``, so a new kind of task needs no change to it.

Batches are ``(inputs, target)``; ``inputs`` is a tensor or a tuple of tensors (an image and
its question tokens and their padding mask, say), passed to the model as ``model(*inputs)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
import torch.nn.functional as F
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


class Objective(Protocol):
    """A task's loss and validation metrics. ``evaluate`` returns ``val_*`` metrics and must
    include ``val_loss`` and the task's ``metric``."""

    def loss(self, out, target: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]: ...


class Classification:
    """Cross-entropy on logits (B, C); label smoothing and Mixup come from the recipe."""

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]:
        """Mean loss, top-1 accuracy, mean class accuracy (the recall of each class seen in
        the validation set, averaged, so that a rare class counts as much as a common one),
        top-5 accuracy."""
        model.eval()
        total, n, top5 = 0.0, 0, 0
        preds, labels = [], []
        for x, y in loader:
            x, y = to_device(x, device), y.to(device)
            logits = forward(model, x)
            total += F.cross_entropy(logits, y, reduction="sum").item()
            preds.append(logits.argmax(-1).cpu())
            k = min(5, logits.shape[-1])
            top5 += (logits.topk(k, dim=-1).indices == y[:, None]).any(-1).sum().item()
            labels.append(y.cpu())
            n += len(y)
        pred, label = torch.cat(preds), torch.cat(labels)
        hit = (pred == label).float()
        per_class = torch.stack([hit[label == c].mean() for c in label.unique()])
        return {"val_loss": total / n, "val_acc": hit.mean().item(),
                "val_mean_class_acc": per_class.mean().item(), "val_top5_acc": top5 / n}


CLASSIFICATION = Classification()


class AnswerScores:
    """Visual question answering as classification over an answer vocabulary with soft
    targets (B, A): VQAv2's score per answer, min(#annotators who gave it / 3, 1), or a
    one-hot row where there is one answer (exact match). The loss is binary cross-entropy
    per answer, scaled by the number of answers (as in the VQA literature: BUTD, METER);
    ``val_acc`` is the mean score of the predicted answer - VQA accuracy, or exact-match
    accuracy for one-hot targets."""

    def loss(self, logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, scores) * scores.shape[1]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]:
        model.eval()
        total, acc, top5, n = 0.0, 0.0, 0.0, 0
        for x, scores in loader:
            x, scores = to_device(x, device), scores.to(device)
            logits = forward(model, x)
            total += self.loss(logits, scores).item() * len(scores)
            acc += scores.gather(1, logits.argmax(-1, keepdim=True)).sum().item()
            k = min(5, logits.shape[-1])
            top5 += scores.gather(1, logits.topk(k, -1).indices).amax(-1).sum().item()
            n += len(scores)
        return {"val_loss": total / n, "val_acc": acc / n, "val_top5_acc": top5 / n}


ANSWER_SCORES = AnswerScores()
