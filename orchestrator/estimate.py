"""The dry run's cost estimate of a planned study, so a user sizes a cluster before starting it.

Per cell kind (family, size, position, task, control): the trials, each one's training FLOPs per
sample, samples and GPU-hours (``experiments.cost_model``: analytic, at an assumed GPU and
MFU, both printed), the GPU share a trial asks for (``orchestrator.resources``, from the
training step's memory, as a real run sizes it), the micro-batch it runs and so how many
trials one GPU holds; then the
study's GPU-hours, its wall clock on a few GPU counts, and the bytes of weights a node
reads. Linear in the plan: trial costs are cached per cell kind, the table is one groupby.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from encoders.lm.controls import get_control
from encoders.lm.registry import get_family
from experiments.cost_model import GPU, trial_cost
from experiments.memory_model import planned_micro_batch
from experiments.trial import TrialSpec, rank_trial
from orchestrator.resources import data_parallel_workers, gpu_share

if TYPE_CHECKING:
    import pandas as pd

ASSUMED_GPU_MEMORY_BYTES = 80e9  # a real run's default without a visible GPU (the H100's)
WALL_CLOCK_GPUS = (1, 8, 64)
CELL = ["family", "size", "position", "task", "control"]


@dataclass(frozen=True)
class Assumptions:
    """What the estimate hangs on, each printed with it."""

    gpu: GPU
    gpu_memory_bytes: float = ASSUMED_GPU_MEMORY_BYTES
    gpus_per_trial: float | None = None  # --gpus-per-trial: every trial's share, as given
    runs_per_trial: float = 1.0  # trials a real run starts per plan row (per-cell search: k)
    notes: tuple[str, ...] = ()  # how the search changes what runs


def estimate_table(plan: list[TrialSpec], assumptions: Assumptions) -> pd.DataFrame:
    """One row per trial: its cell kind, training GFLOPs per sample, training samples,
    GPU-hours (NaN for a task without a cost row) and GPU share."""
    import pandas as pd

    names = (*CELL, "train_gflops", "samples", "gpu_hours", "gpu_share", "micro_batch", "k")
    share = assumptions.gpus_per_trial
    trial_bytes = assumptions.gpu_memory_bytes * (min(1.0, share) if share else 1.0)
    workers = data_parallel_workers(share)  # N > 1: each GPU runs 1/N of the batch
    known: dict[tuple, tuple] = {}  # per cell kind: the row (seeds and layers share it)
    rows = []
    for t in plan:
        hp = t.hparams
        key = (t.family, t.size, len(t.layers), t.position, t.task, t.control, hp.epochs,
               hp.ema_decay, hp.batch_size, hp.micro_batch)
        row = known.get(key)
        if row is None:
            cost = trial_cost(t)
            micro = planned_micro_batch(rank_trial(t, workers), trial_bytes) or 0  # check_fits
            # refuses 0
            row = known[key] = (
                t.family or "-", t.size or "-", t.position if t.family else "-", t.task,
                t.control,
                cost.step.train_step / 1e9 if cost else math.nan,
                cost.train_samples if cost else math.nan,
                cost.gpu_hours(assumptions.gpu) if cost else math.nan,
                share if share is not None else gpu_share(t, assumptions.gpu_memory_bytes),
                micro, -(-hp.batch_size // workers // micro) if micro else 0)
        rows.append(row)
    return pd.DataFrame.from_records(rows, columns=names)


def cell_table(estimates: pd.DataFrame) -> pd.DataFrame:
    """Per cell kind, in plan order: trials, their mean cost, the kind's GPU-hours, the
    largest share a trial asks for and how many such trials one GPU holds."""
    cells = estimates.groupby(CELL, sort=False).agg(
        trials=("gpu_hours", "size"), train_gflops=("train_gflops", "mean"),
        samples=("samples", "mean"), gpu_h_per_trial=("gpu_hours", "mean"),
        gpu_h=("gpu_hours", lambda h: h.sum(min_count=1)), gpu_share=("gpu_share", "max"),
        micro_batch=("micro_batch", "min"), k=("k", "max"),
    ).reset_index()
    cells["per_gpu"] = (1 / cells["gpu_share"] + 1e-9).map(math.floor)  # 0: N GPUs a trial
    return cells


def weights_per_node(plan: list[TrialSpec]) -> tuple[int, int]:
    """(bytes of every distinct layer the study reads, the largest one trial reads): a node
    reads only its trials' layers, each once (the layer cache keeps it), so no node reads
    more than the first."""
    reads = {c: get_control(c).weights_source == "pretrained" for c in {t.control for t in plan}}
    layers = {(t.family, t.size, i) for t in plan if reads[t.control] for i in t.layers}
    spans = {(t.family, t.size, len(t.layers)) for t in plan if reads[t.control] and t.layers}

    def layer_bytes(family: str, size: str) -> int:
        fam = get_family(family)
        return round(fam.layer_params(size) * fam.size(size).disk_bytes_per_param)

    return (sum(layer_bytes(f, s) for f, s, _ in layers),
            max((layer_bytes(f, s) * n for f, s, n in spans), default=0))


def hours(h: float) -> str:
    """GPU-hours: three significant digits (tiny embedded trials are small fractions), whole
    hours from 100 up."""
    if math.isnan(h):
        return "-"
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def estimate_lines(plan: list[TrialSpec], assumptions: Assumptions,
                   unfinished: list[bool] | None = None) -> list[str]:
    """What the dry run prints after the plan; ``unfinished`` (aligned with ``plan``): the
    trials a run still has to do, when the store's statuses are known."""
    from orchestrator.plan import human_bytes

    gpu = assumptions.gpu
    est = estimate_table(plan, assumptions)
    cells = cell_table(est)
    shares = ("--gpus-per-trial" if assumptions.gpus_per_trial is not None else
              f"from a step's memory on {assumptions.gpu_memory_bytes / 1e9:g} GB GPUs "
              "(--gpu-memory-gb)")
    gpu_line = (f"  GPU: {gpu.name}, dense bf16 peak {gpu.peak_flops / 1e12:g} TFLOP/s "
                f"(--peak-tflops for another), at an assumed {gpu.mfu:.0%} MFU; GPU share "
                f"{shares}")
    flops_line = ("  FLOPs per training sample: the task's encoder (its catalog row) + the "
                  "inserted module: 2 x params x tokens + attention; backward 2x forward where "
                  "weights train, 1x through a frozen block")
    micro_line = ("  micro_batch, k: the samples per forward and the micro-batches per optimizer "
                  "step (--micro-batch auto: the largest that fits the GPU by "
                  "experiments/memory_model.py; k 1: the whole batch at once); with "
                  "--gpus-per-trial N > 1, per GPU, each of the N taking 1/N of the batch")
    samples_line = ("  samples per trial: epochs x the task's training set, plus a validation "
                    "forward each epoch; small models reach far less than the assumed MFU: "
                    "their hours are a lower bound")
    head = "cost estimate: analytic, from the plan alone (not measured; experiments/cost_model.py)"
    lines = ["", head, gpu_line, flops_line, samples_line, micro_line,
             *(f"  {note}" for note in assumptions.notes)]
    shown = cells.assign(
        train_gflops=cells["train_gflops"].map(lambda g: "-" if math.isnan(g) else f"{g:.4g}"),
        samples=cells["samples"].map(lambda n: "-" if math.isnan(n) else f"{n:,.0f}"),
        gpu_h_per_trial=cells["gpu_h_per_trial"].map(hours),
        gpu_h=cells["gpu_h"].map(hours),
        gpu_share=cells["gpu_share"].map(lambda s: f"{s:g}"),
    )
    lines.append(shown.to_string(index=False))
    runs = assumptions.runs_per_trial
    total = float(est["gpu_hours"].sum()) * runs
    workers = data_parallel_workers(assumptions.gpus_per_trial)
    # an N-GPU trial: its GPU-hours over N GPUs at once (at the assumed MFU on each: linear
    # scaling, an upper bound on the speed-up); a cluster of fewer GPUs cannot run it
    longest = (float(est["gpu_hours"].max()) if est["gpu_hours"].notna().any() else 0.0) / workers
    walls = ", ".join(
        f"{hours(max(total / n, longest)) + ' h' if n >= workers else '-'} on {n} "
        f"GPU{'s' * (n > 1)}"
        for n in WALL_CLOCK_GPUS)
    unknown = int(est["gpu_hours"].isna().sum())
    seconds = f" ({total * 3600:.3g} GPU-seconds)" if total < 1 else ""
    lines.append(f"\nstudy: {round(len(plan) * runs):,} trials, {hours(total)} GPU-hours{seconds}; "
                 f"wall clock at best {walls} (no sooner than its longest trial, "
                 f"{hours(longest)} h{f' on {workers} GPUs' if workers > 1 else ''})")
    if unknown:
        lines.append(f"  {unknown} trials not estimated: their tasks have no cost row in "
                     "experiments/tasks/catalog.py")
    if unfinished is not None and not all(unfinished):
        todo = float(est["gpu_hours"][unfinished].sum()) * runs
        lines.append(f"  not yet finished: {sum(unfinished)} trials, {hours(todo)} GPU-hours")
    distinct, largest = weights_per_node(plan)
    lines.append(f"weights per node: at most {human_bytes(distinct)}, every distinct layer of "
                 "the study (a node reads only its own trials' layers, each once: the layer "
                 f"cache keeps them); the largest single trial reads {human_bytes(largest)}")
    return lines
