"""Classification: cross-entropy on logits (B, C); top-1, mean-class and top-5 accuracy.

Label smoothing and Mixup/CutMix are the recipe's (``experiments/recipe.py``): the training
loop swaps in their loss for this one's when a trial sets them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from experiments.batches import forward, to_device


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
