"""One trial's training: seeded, resumable per epoch, reporting per-epoch metrics.

Knows nothing of Ray or MLflow: ``report(metrics, state)`` is how results leave, and
``restore`` is how a checkpointed state comes back, so the same loop runs under Ray Tune,
in a test, or in a benchmark's bare loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import experiments.tasks  # noqa: F401  (registers the tasks)
from encoders.lm.block_factory import BlockInfo
from encoders.lm.controls import build_block
from encoders.lm.frozen_block import FrozenLMBlock, frozen_parameter_count
from experiments.batches import batch_len, forward, to_device
from experiments.objectives.classification import CLASSIFICATION
from experiments.probe import probe_batch, probe_filtering
from experiments.recipe import lr_at, make_loss, make_mixer
from experiments.tasks.registry import get_task
from experiments.trial import TrialSpec


@dataclass
class TrainState:
    """What a checkpoint holds: trainable weights only (the frozen block is re-read)."""

    epoch: int  # epochs completed
    model: dict[str, torch.Tensor]
    optimizer: dict
    best: float | None = None  # best value of the task's metric so far


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
    ``mixer`` turns (x, y) into mixed inputs and soft targets for ``loss_fn`` (the task's
    objective's loss; cross-entropy when not given)."""
    model.train()
    loss_fn = loss_fn or F.cross_entropy
    total, n = 0.0, 0
    for step, (x, y) in enumerate(loader):
        x, y = to_device(x, device), to_device(y, device)
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr(step)
        if mixer is not None:
            x, y = mixer(x, y)
        loss = loss_fn(forward(model, x), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * batch_len(y)
        n += batch_len(y)
    return total / n


def resolve_compute_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto``: float32 on CPU (bf16 matmuls are slow there), bfloat16 on a GPU."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def run_trial(
    trial: TrialSpec,
    report: Report,
    *,
    weights_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    restore: TrainState | None = None,
    device: str | torch.device = "cpu",
) -> BlockInfo:
    """Train ``trial`` from its start (or from ``restore``), reporting every epoch's metrics
    with the state to checkpoint. Reports carry what the block was built from (weights'
    source, checkpoint identity, layers' hash): the driver tags the run with it once."""
    hp = trial.hparams
    task = get_task(trial.task)
    torch.manual_seed(trial.seed)
    dtype = resolve_compute_dtype(hp.compute_dtype, device)
    block, info = build_block(
        family=trial.family,
        size=trial.size,
        layers=trial.layers,
        control=trial.control,
        seed=trial.seed,
        visual_dim=task.visual_dim,
        weights_dir=weights_dir,
        dtype=dtype,
        final_norm=hp.final_norm,
    )
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
    objective = task.objective or CLASSIFICATION
    if objective is CLASSIFICATION:
        mixer = make_mixer(hp, task.num_classes)
        loss_fn = make_loss(hp, mixing=mixer is not None)
    elif hp.mixup or hp.cutmix or hp.label_smoothing:
        raise ValueError(f"task {task.name!r} is not classification: mixup, cutmix and "
                         "label smoothing do not apply (set them to 0)")
    else:
        mixer, loss_fn = None, objective.loss
    val_loader = DataLoader(val_ds, batch_size=256)
    probe_x = probe_batch(val_ds, task.probe_size)
    static = {
        "frozen_params": frozen_parameter_count(block),
        "trainable_params": sum(p.numel() for p in params),
    }
    built = {  # what this attempt loaded: the run records it once, as tags
        "weights_source": info.weights_source,
        "checkpoint_identity": info.checkpoint,
        "checkpoint_path": info.checkpoint_path,
        "layers_sha256": info.layers_sha256,
        "compute_dtype": str(dtype).removeprefix("torch.") if block is not None else "none",
    }
    best = restore.best if restore is not None else None
    better = max if task.mode == "max" else min
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
        scores = objective.evaluate(model, val_loader, device)
        value = scores[task.metric]
        best = value if best is None else better(best, value)
        filtering = probe_filtering(model, task, to_device(probe_x, device))
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **scores,
            "lr": optimizer.param_groups[0]["lr"],
            f"best_{task.metric}": best,
            **static,
            **built,
            **filtering,
        }
        opt_state = copy.deepcopy(optimizer.state_dict())  # a snapshot, not live references
        state = TrainState(epoch + 1, trainable_state(model), opt_state, best)
        report(metrics, state)
    return info
