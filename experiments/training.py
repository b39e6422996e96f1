"""One trial's training: seeded, resumable per epoch, reporting per-epoch metrics.

Knows nothing of Ray or MLflow: ``report(metrics, state)`` is how results leave, and
``restore`` is how a checkpointed state comes back, so the same loop runs under Ray Tune,
in a test, or in a benchmark's bare loop.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import experiments.tasks  # noqa: F401  (registers the tasks)
from encoders.block_factory import BlockInfo, build_block
from encoders.frozen_block import FrozenLMBlock, frozen_parameter_count
from experiments.recipe import lr_at, make_loss, make_mixer
from experiments.tasks.registry import get_task
from results.filtering import probe


@dataclass
class TrainState:
    """What a checkpoint holds: trainable weights only (the frozen block is re-read)."""

    epoch: int  # epochs completed
    model: dict[str, torch.Tensor]
    optimizer: dict
    best: float = 0.0  # best validation metric so far


Report = Callable[[dict[str, object], TrainState], None]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # clone: on CPU, .cpu() aliases the live tensors, which the next step would overwrite
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: the trial stops at once (the sweep goes on)."""


def train_epoch(model, loader, optimizer, device, epoch: int = 0, *,
                lr: Callable[[int], float] | None = None, loss_fn=None, mixer=None) -> float:
    """One pass; ``lr(step)`` sets the learning rate before each step (the schedule),
    ``mixer`` turns (x, y) into mixed inputs and soft targets for ``loss_fn``."""
    model.train()
    loss_fn = loss_fn or F.cross_entropy
    total, n = 0.0, 0
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr(step)
        if mixer is not None:
            x, y = mixer(x, y)
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        n += len(y)
    return total / n


@torch.no_grad()
def evaluate(model, loader, device) -> tuple[float, float, float, float]:
    """(mean loss, overall (top-1) accuracy, mean class accuracy: the recall of each class seen
    in the validation set, averaged, so that a rare class counts as much as a common one,
    top-5 accuracy)."""
    model.eval()
    total, n, top5 = 0.0, 0, 0
    preds, labels = [], []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total += F.cross_entropy(logits, y, reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
        k = min(5, logits.shape[-1])
        top5 += (logits.topk(k, dim=-1).indices == y[:, None]).any(-1).sum().item()
        labels.append(y.cpu())
        n += len(y)
    pred, label = torch.cat(preds), torch.cat(labels)
    hit = (pred == label).float()
    classes = label.unique()
    per_class = torch.stack([hit[label == c].mean() for c in classes])
    return total / n, hit.mean().item(), per_class.mean().item(), top5 / n


def probe_filtering(model: nn.Module, task, probe_x: torch.Tensor) -> dict[str, object]:
    """The information-filtering measures on the fixed probe batch: concentration scores as
    metrics (where the task knows its informative tokens) and the per-token maps, as JSON
    text, for the report's figures."""
    if task.informative_tokens is None or not hasattr(model, "blocks"):
        return {}
    informative = task.informative_tokens(probe_x.cpu())
    result = probe(model, probe_x, informative.to(probe_x.device), task.prefix_tokens)
    maps = result.to_json(probe_x.cpu(), informative)
    return {**result.metrics(), "probe_maps": json.dumps(maps, separators=(",", ":"))}


def resolve_compute_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto``: float32 on CPU (bf16 matmuls are slow there), bfloat16 on a GPU."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def run_trial(
    trial,  # orchestrator.plan.TrialSpec (duck-typed: experiments must not import orchestrator)
    report: Report,
    *,
    weights_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    restore: TrainState | None = None,
    device: str | torch.device = "cpu",
) -> BlockInfo:
    hp = trial.hparams
    task = get_task(trial.task)
    torch.manual_seed(trial.seed)
    block, info = build_block(
        family=trial.family,
        size=trial.size,
        layers=trial.layers,
        control=trial.control,
        seed=trial.seed,
        visual_dim=task.visual_dim,
        weights_dir=weights_dir,
        dtype=resolve_compute_dtype(hp.compute_dtype, device),
        final_norm=hp.final_norm,
    )
    block_dtype = resolve_compute_dtype(hp.compute_dtype, device) if block is not None else "none"
    if isinstance(block, FrozenLMBlock):
        block.init_adapters(hp.adapter_init)
    model = task.build_model(block).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
    start = 0
    if restore is not None:
        missing = model.load_state_dict(restore.model, strict=False).missing_keys
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        if set(missing) - frozen:
            raise RuntimeError(f"checkpoint lacks trainable tensors {sorted(set(missing) - frozen)}")
        optimizer.load_state_dict(restore.optimizer)
        start = restore.epoch

    train_ds, val_ds = task.build_data(data_dir)
    mixer = make_mixer(hp, task.num_classes)
    loss_fn = make_loss(hp, mixing=mixer is not None)
    val_loader = DataLoader(val_ds, batch_size=256)
    probe_x = torch.stack([val_ds[i][0] for i in range(min(task.probe_size, len(val_ds)))])
    static = {
        "frozen_params": frozen_parameter_count(block),
        "trainable_params": sum(p.numel() for p in params),
    }
    best = restore.best if restore is not None else 0.0
    for epoch in range(start, hp.epochs):
        # Shuffling seeded per (seed, epoch): a resumed trial sees the same batches.
        gen = torch.Generator().manual_seed(trial.seed * 100_003 + epoch)
        loader = DataLoader(train_ds, batch_size=hp.batch_size, shuffle=True, generator=gen,
                            drop_last=mixer is not None)  # timm's Mixup wants even batches
        np.random.seed(trial.seed * 100_003 + epoch)  # timm's Mixup draws from numpy
        steps = len(loader)
        train_loss = train_epoch(
            model, loader, optimizer, device, epoch,
            lr=lambda step, e=epoch, n=steps: lr_at(hp, e, step, n), loss_fn=loss_fn, mixer=mixer)
        val_loss, val_acc, val_mean_class_acc, val_top5 = evaluate(model, val_loader, device)
        best = max(best, val_acc)
        filtering = probe_filtering(model, task, probe_x.to(device))
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "val_mean_class_acc": val_mean_class_acc,
            "val_top5_acc": val_top5,
            "lr": optimizer.param_groups[0]["lr"],
            "best_val_acc": best,
            **static,
            "layers_sha256": info.layers_sha256,
            "compute_dtype": str(block_dtype).removeprefix("torch."),
            **filtering,
        }
        opt_state = copy.deepcopy(optimizer.state_dict())  # a snapshot, not live references
        state = TrainState(epoch + 1, trainable_state(model), opt_state, best)
        report(metrics, state)
    return info
