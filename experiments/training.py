"""One trial's training: seeded, resumable per epoch, reporting per-epoch metrics and cost.

Knows nothing of Ray or MLflow: ``report(metrics, state)`` is how results leave, and
``restore`` is how a checkpointed state comes back, so the same loop runs under Ray Tune,
in a test, or in a benchmark's bare loop. The hardware choices (autocast, TF32, fused AdamW,
torch.compile) are ``experiments.compute``'s, the loaders ``experiments.loading``'s, the
cost measures ``experiments.cost``'s.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from encoders.lm.auxiliary import AuxiliaryBranch, with_auxiliary_loss
from encoders.lm.block_factory import BlockInfo
from encoders.lm.frozen_block import (
    frozen_parameter_count,
    trainable_parameter_count,
)
from encoders.lm.inserted import VisualBlockSlot
from experiments.accumulation import exactness, trial_micro_batch
from experiments.batches import as_float32, forward, to_device
from experiments.block_measures import block_measures
from experiments.compute import configure
from experiments.cost import (
    StepFlops,
    count_flops,
    device_name,
    mfu,
    peak_flops,
    peak_memory_bytes,
    reset_peak_memory,
)
from experiments.epoch import (  # noqa: F401  (the loop's home; re-exported for callers)
    NONFINITE_CHECK_STEPS,
    EpochStats,
    NonFiniteLossError,
    train_epoch,
)
from experiments.loading import (
    epoch_seed,
    loader_settings,
    micro_seed,
    resolve_num_workers,
    seed_all,
    train_loader,
)
from experiments.memory_model import micro_batch_multiple
from experiments.objectives.classification import CLASSIFICATION
from experiments.parallel import (
    SINGLE,
    DataParallel,
    RankBatchSampler,
    Reduced,
    rank_trial,
    reduce_epoch,
    unused_parameters,
    wrap,
)
from experiments.parallel import no_sync as no_sync_of
from experiments.param_groups import param_groups
from experiments.plateau import chance_loss
from experiments.probe import probe_batch, probe_filtering, spread_batch
from experiments.recipe import effective_lr, lr_at, make_loss, make_mixer
from experiments.regularisation import apply_drop_path, clipper, ema_scores, make_ema
from experiments.tasks.registry import task_for
from experiments.trial import AUTO_MICRO_BATCH, TrialSpec
from experiments.trial_model import build_trial_model

VAL_BATCH_SIZE = 256

@dataclass
class TrainState:
    """What a checkpoint holds: trainable weights only (the frozen block is re-read)."""

    epoch: int  # epochs completed
    model: dict[str, torch.Tensor]
    optimizer: dict
    best: float | None = None  # best value of the task's metric so far
    scaler: dict | None = None  # float16's gradient scaler, when the trial has one
    ema: dict | None = None  # the weights' moving average (its trainable tensors), when kept


Report = Callable[[dict[str, object], TrainState | None], None]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # clone: on CPU, .cpu() aliases the live tensors, which the next step would overwrite
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}


def available_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def epoch_cost(run: Reduced, steps: int, flops: StepFlops | None, peak: float | None,
               world: int = 1) -> dict[str, object]:
    """The per-epoch cost metrics (``experiments.cost.COST_METRICS``) over every process of
    the trial: samples/s summed (every rank's samples over the slowest rank's time), MFU
    over the ``world`` GPUs' peak."""
    per_s = run.samples / run.seconds if run.seconds > 0 else 0.0
    achieved = flops.train_step_per_sample * per_s if flops else None
    return {
        "samples_per_s": per_s,
        "step_time_s": run.seconds / steps if steps else 0.0,
        "data_wait_share": run.data_wait_s / run.seconds if run.seconds > 0 else 0.0,
        "peak_memory_bytes": run.peak_memory_bytes,
        "achieved_tflops": achieved / 1e12 if achieved is not None else None,
        "mfu": mfu(achieved, peak * world) if achieved is not None and peak else None,
    }


def run_trial(
    trial: TrialSpec,
    report: Report,
    *,
    weights_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    restore: TrainState | None = None,
    device: str | torch.device = "cpu",
    cpus: int | None = None,
    peak_tflops: float | None = None,
    gpu_share: float = 1.0,
    parallel: DataParallel = SINGLE,
) -> BlockInfo:
    """Train ``trial`` from its start (or from ``restore``), reporting every epoch's metrics
    with the state to checkpoint. Reports carry what the block was built from (weights'
    source, checkpoint identity, layers' hash), how the trial ran (``RUN_SETTINGS``) and what
    it cost: the driver records the constants once. ``cpus``: the CPUs the trial was given
    (sizes ``num_workers=auto``; default: this process's), ``peak_tflops``: the device's bf16
    peak for MFU when the known-GPU table lacks it, ``gpu_share``: the part of the GPU the
    trial was given (``--micro-batch auto`` fits its step in that part), ``parallel``: this
    process's rank among the trial's data-parallel processes (``experiments.parallel``; a
    process group is up): rank 0 evaluates and reports the metrics, the others report
    ``({"epoch": n}, None)``."""
    hp = trial.hparams
    task = task_for(trial.task, trial.encoder, data_dir)
    device = torch.device(device)
    compute = configure(hp, device)
    model, block, info, encoder = build_trial_model(trial, task, weights_dir, compute.dtype)
    drop_path_blocks = apply_drop_path(model, hp.drop_path, f"task {task.name!r}")
    model = model.to(device)
    optimizer = compute.optimizer(param_groups(model, hp), hp)
    scaler = compute.scaler()
    start = 0
    if restore is not None:
        missing = model.load_state_dict(restore.model, strict=False).missing_keys
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        if set(missing) - frozen:
            raise RuntimeError(f"checkpoint lacks trainable tensors {sorted(set(missing) - frozen)}")
        optimizer.load_state_dict(restore.optimizer)
        if scaler is not None and restore.scaler:
            scaler.load_state_dict(restore.scaler)
        start = restore.epoch
    ema = make_ema(model, hp, restore.ema if restore is not None else None)

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
    if isinstance(block, AuxiliaryBranch):  # Bai et al.: + aux_weight x the branch's loss
        loss_fn = with_auxiliary_loss(loss_fn, block, hp.aux_weight)
    multiple = micro_batch_multiple(trial)
    micro = trial_micro_batch(rank_trial(trial, parallel.world), gpu_bytes(device, gpu_share))
    # what k micro-batches would change (read before any evaluation puts BatchNorm in eval)
    inexact = exactness(model, getattr(objective, "per_sample_loss", True), multiple == 2)
    cpus = cpus or available_cpus()
    workers = resolve_num_workers(hp.num_workers, cpus, task.embedded, device)
    settings = loader_settings(workers, device)
    loader, sampler = train_loader(train_ds, hp.batch_size, trial.seed,
                                   drop_last=mixer is not None,  # timm's Mixup: even batches
                                   repeats=hp.repeated_aug, parallel=parallel, **settings)
    batches = loader.batch_sampler
    global_sizes = batches.global_sizes() if isinstance(batches, RankBatchSampler) else None
    val_settings = loader_settings(workers, device, persistent=False)
    make_val_loader = getattr(objective, "val_loader", None)
    val_loader = (make_val_loader(val_ds, batch_size=VAL_BATCH_SIZE, **val_settings)
                  if make_val_loader
                  else DataLoader(val_ds, batch_size=VAL_BATCH_SIZE, **val_settings))
    probe_x = probe_batch(val_ds, task.probe_size)
    probe_xy = tuple(to_device(b, device) for b in spread_batch(val_ds, task.probe_size))
    initial = (block_measures(model, task, probe_xy, "_init")
               if restore is None and parallel.leader else {})
    evaluated = torch.compile(model) if compute.compile else model  # model's parameters
    runner = evaluated  # data-parallel: DDP trains; rank 0 evaluates alone, without it
    if parallel.world > 1:
        runner = wrap(model, device, parallel,
                      unused_parameters(model, to_device(probe_x, device), forward))
        runner = torch.compile(runner) if compute.compile else runner

    name = device_name(device)
    peak = peak_flops(name, peak_tflops) if device.type == "cuda" else None
    flops: StepFlops | None = None

    def count_once(x, y) -> None:
        nonlocal flops
        flops = count_flops(model, x, y, lambda out, target: loss_fn(as_float32(out), target))
        reset_peak_memory(device)  # the count ran a step of its own: the peak is training's

    reset_peak_memory(device)
    built = {  # what this attempt loaded: the run records it once, as tags
        "weights_source": info.weights_source,
        "checkpoint_identity": info.checkpoint,
        "checkpoint_path": info.checkpoint_path,
        "layers_sha256": info.layers_sha256,
        "checkpoint_quantization": info.quantization,
        "compute_dtype": str(compute.dtype).removeprefix("torch.") if block is not None else "none",
        **encoder,
    }
    run_settings = {"num_workers": workers, "cpus": cpus, "data_parallel": parallel.world,
                    **compute.settings()}
    recipe = {"effective_lr": effective_lr(hp), "drop_path_blocks": drop_path_blocks}
    best = restore.best if restore is not None else None
    better = max if task.mode == "max" else min
    for epoch in range(start, hp.epochs):
        # Every RNG of the main process seeded per (seed, epoch) (dropout, timm's Mixup draws
        # from numpy), the samples per (seed, epoch, index): a resumed trial sees the same.
        seed_all(epoch_seed(trial.seed, epoch))
        sampler.set_epoch(epoch)
        steps = len(loader)
        stats = train_epoch(
            runner, loader, optimizer, device, epoch,
            lr=lambda step, e=epoch, n=steps: lr_at(hp, e, step, n), loss_fn=loss_fn,
            mixer=mixer, autocast=compute.autocast, scaler=scaler,
            before_first_step=count_once if flops is None else None,
            clip=clipper(optimizer, hp.clip_grad),
            after_step=(lambda: ema.update(model)) if ema is not None else None,
            micro_batch=micro, multiple_of=multiple,
            retry_out_of_memory=(device.type == "cuda" and hp.micro_batch == AUTO_MICRO_BATCH
                                 and parallel.world == 1),  # ranks must agree on one
            seed_micro=lambda step, i, e=epoch: seed_all(micro_seed(trial.seed, e, step, i)),
            parallel=parallel, global_sizes=global_sizes, no_sync=no_sync_of(runner))
        micro = stats.micro_batch  # what the first step settled on, for every later one
        run = reduce_epoch(stats.loss, stats.samples, stats.seconds, stats.data_wait_s,
                           peak_memory_bytes(device), parallel, device)
        if not parallel.leader:
            report({"epoch": epoch + 1}, None)
            continue
        with compute.autocast():
            scores = objective.evaluate(evaluated, val_loader, device)
            scores.update(ema_scores(ema, lambda m: objective.evaluate(m, val_loader, device)))
        value = scores[task.metric]
        best = value if best is None else better(best, value)
        filtering = probe_filtering(model, task, to_device(probe_x, device))
        metrics = {
            "epoch": epoch + 1,
            "train_loss": run.loss,
            **scores,
            "lr": lr_at(hp, epoch, steps - 1, steps),  # the schedule's (groups scale it)
            f"best_{task.metric}": best,
            "chance_loss": chance_loss(task.chance) if objective is CLASSIFICATION else None,
            **cost_params(model, block, flops, name, peak),
            **epoch_cost(run, stats.steps, flops, peak, parallel.world),
            **built,
            **run_settings,
            **batch_settings(hp.batch_size, micro, inexact, parallel.world),
            **recipe,
            **filtering,
            **initial,  # Bai et al.'s measures before the first step, then at this epoch
            **block_measures(model, task, probe_xy),
        }
        opt_state = copy.deepcopy(optimizer.state_dict())  # a snapshot, not live references
        state = TrainState(epoch + 1, trainable_state(model), opt_state, best,
                           scaler.state_dict() if scaler is not None else None,
                           trainable_state(ema.module) if ema is not None else None)
        report(metrics, state)
    return info


def gpu_bytes(device: torch.device, share: float) -> float | None:
    """The GPU memory a trial may fill: its share of the device's; None on a CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory * share


def batch_settings(batch_size: int, micro: int, inexact: str, world: int = 1
                   ) -> dict[str, object]:
    """How the global batch ran (``experiments.cost.RUN_SETTINGS``): its micro-batches (k
    per process: ``accum_steps``; ``world`` processes data-parallel), and whether the
    ``world`` x k of them are the whole batch's step (``inexact``: ``accumulation.exactness``;
    data-parallel, BatchNorm's running statistics are rank 0's)."""
    steps = -(-(batch_size // world) // micro)
    return {"global_batch": batch_size, "micro_batch_size": micro, "accum_steps": steps,
            "accumulation_exact": "exact" if steps * world == 1 else inexact}


def cost_params(model: nn.Module, block: nn.Module | None, flops: StepFlops | None,
                name: str, peak: float | None) -> dict[str, object]:
    """The trial's constant costs (``experiments.cost.COST_PARAMS``)."""
    return {
        "frozen_params": frozen_parameter_count(block),
        "inserted_trainable_params": trainable_parameter_count(block),
        # visual-block: the LM layers' count it is sized to, and its own ("" elsewhere)
        "lm_block_params": block.lm_params if isinstance(block, VisualBlockSlot) else "",
        "visual_block_params": block.visual_params if isinstance(block, VisualBlockSlot) else "",
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "gflops_forward_per_sample": flops.forward_per_sample / 1e9 if flops else None,
        "gflops_train_step_per_sample": flops.train_step_per_sample / 1e9 if flops else None,
        "device_name": name,
        "peak_tflops": peak / 1e12 if peak else "",
    }
