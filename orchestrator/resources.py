"""Per-trial resources from the plan: a step's memory decides a trial's share of a GPU.

Several small-LM trials share one GPU (a MiniLM or OPT-125m layer needs well under a tenth of
an 80 GB card) while a large block gets a larger share, up to a whole GPU; a CPU-only cluster
runs CPU trials (asking for a GPU there would leave every trial PENDING forever).
``--gpus-per-trial`` overrides the estimate.

CPUs follow the GPU share: a trial's DataLoader workers decode and augment on the CPUs Ray
gives it, so on a GPU node a trial gets its part of the node's CPUs: the node's CPUs divided
by how many trials its GPUs hold (96 CPUs and 8 GPUs holding 16 half-GPU trials: 6 CPUs
each). One CPU per trial would starve every GPU trial of real data. On a CPU-only cluster a
trial takes one CPU. ``--cpus-per-trial`` overrides both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from experiments.memory_model import (
    HEADROOM,
    micro_batch_multiple,
    planned_micro_batch,
    step_memory,
)
from experiments.trial import TrialSpec, check_micro_batch, rank_trial

if TYPE_CHECKING:  # the dry run's estimate reads the shares without importing Ray
    from ray.tune import PlacementGroupFactory

GPU_SHARE_STEPS = 8  # shares are multiples of 1/8 GPU
DRIVER_MEMORY_BYTES = 2**29  # a data-parallel trial's Tune process: Train's driver, no model


def worker_resources(cluster_gpus: float, cpus_per_trial: int | None,
                     per_gpu: float) -> tuple[int, bool]:
    """(CPUs, whether a GPU) of each worker of a data-parallel trial: a whole GPU and its
    part of the node's CPUs; one CPU (or ``--cpus-per-trial``) on a cluster without GPUs."""
    if cluster_gpus < 1:
        return cpus_per_trial or 1, False
    return cpus_per_trial or cpus_for(1.0, per_gpu), True


def gpu_share(trial: TrialSpec, gpu_memory_bytes: float) -> float:
    """The part of a GPU of ``gpu_memory_bytes`` the trial's step needs at the micro-batch
    it will run (``experiments.memory_model``: under ``--micro-batch auto``, the largest that
    fits one GPU), with the model's headroom; a whole GPU when even that does not fit."""
    micro = planned_micro_batch(trial, gpu_memory_bytes)
    if micro is None:
        return 1.0
    need = step_memory(trial).at(micro) / HEADROOM
    return min(1.0, math.ceil(need / gpu_memory_bytes * GPU_SHARE_STEPS) / GPU_SHARE_STEPS)


def cpus_per_gpu(nodes: list[dict]) -> float:
    """CPUs per GPU of the cluster's GPU nodes (``ray.nodes()``), the smallest ratio of any
    alive node, so that a trial sized by it fits on every GPU node; 0 without GPU nodes."""
    ratios = [n["Resources"].get("CPU", 0) / n["Resources"]["GPU"] for n in nodes
              if n.get("Alive", True) and n.get("Resources", {}).get("GPU", 0) > 0]
    return min(ratios, default=0.0)


def cpus_for(share: float, per_gpu: float) -> int:
    """A trial's CPUs from its GPU share: its part of the node's CPUs, at least one."""
    return max(1, math.floor(share * per_gpu + 1e-9))


def data_parallel_workers(gpus_per_trial: float | None) -> int:
    """Processes a trial trains on: ``--gpus-per-trial N`` > 1 is N data-parallel workers
    (one GPU each; on a cluster without GPUs, N CPU workers with gloo), else 1."""
    return int(gpus_per_trial) if gpus_per_trial is not None and gpus_per_trial > 1 else 1


def check_gpus_per_trial(gpus_per_trial: float | None) -> None:
    """A share of one GPU, or a whole number of them (data-parallel workers); SpecError,
    one line, otherwise."""
    from orchestrator.spec import SpecError

    if gpus_per_trial is not None and gpus_per_trial > 1 and gpus_per_trial % 1:
        raise SpecError(f"bad --gpus-per-trial {gpus_per_trial:g}; valid: a share of one GPU "
                        "in (0, 1], or a whole number N >= 2 (N data-parallel workers)")


def per_trial_resources(
    cluster_gpus: float, gpus_per_trial: float | None, gpu_memory_bytes: float,
    cpus_per_trial: int | None = None, per_gpu: float = 0.0,
) -> Callable[[dict], PlacementGroupFactory]:
    """``per_gpu``: ``cpus_per_gpu(ray.nodes())``; ``cpus_per_trial``: the override. A
    data-parallel trial's Tune process only drives Ray Train's workers (they ask for the
    GPUs and CPUs, ``worker_resources``): it holds memory for itself, no CPU."""
    from ray.tune import PlacementGroupFactory

    def resources(config: dict) -> PlacementGroupFactory:
        if data_parallel_workers(gpus_per_trial) > 1:
            return PlacementGroupFactory([{"memory": DRIVER_MEMORY_BYTES}])
        if cluster_gpus < 1:
            return PlacementGroupFactory([{"CPU": cpus_per_trial or 1}])
        share = gpus_per_trial if gpus_per_trial is not None else gpu_share(
            TrialSpec.from_config(config), gpu_memory_bytes)
        cpus = cpus_per_trial or cpus_for(share, per_gpu)
        return PlacementGroupFactory([{"CPU": cpus, "GPU": share}])

    return resources


def check_micro_batches(plan: list[TrialSpec]) -> None:
    """Every trial's ``--micro-batch`` divides its global batch (a task's own recipe may
    change the batch), and is even where Mixup/CutMix mix each micro-batch; SpecError, one
    line, otherwise."""
    from orchestrator.spec import SpecError

    seen = set()
    for trial in plan:
        hp = trial.hparams
        case = (hp.micro_batch, hp.batch_size, micro_batch_multiple(trial))
        if case in seen:
            continue
        seen.add(case)
        try:
            check_micro_batch(*case)
        except ValueError as e:
            raise SpecError(f"{e} (task {trial.task})") from None


def check_data_parallel(plan: list[TrialSpec], workers: int) -> None:
    """N data-parallel workers split every optimizer step's batch in N equal parts, each a
    whole number of its micro-batches: SpecError, one line, for a trial whose batch does
    not split so."""
    from orchestrator.spec import SpecError

    if workers == 1:
        return
    for hp, task in {(t.hparams, t.task): None for t in plan}:
        if hp.batch_size % workers:
            raise SpecError(f"bad batch_size {hp.batch_size} for --gpus-per-trial {workers} "
                            f"(task {task}); valid: a multiple of {workers}, each worker "
                            "taking an equal part of the global batch")
    check_micro_batches([rank_trial(t, workers) for t in plan])


def check_fits(plan: list[TrialSpec], gpu_memory_bytes: float, workers: int = 1) -> None:
    """Refuse, in one line, a plan with a trial that no micro-batch fits on one GPU (its
    frozen layers alone may not): a real run would fail it on its first step, after Ray.
    ``workers``: data-parallel, each GPU holds its part of the batch."""
    from orchestrator.spec import SpecError

    seen = set()
    for trial in (rank_trial(t, workers) for t in plan):
        kind = (trial.family, trial.size, len(trial.layers), trial.task, trial.control,
                trial.hparams.batch_size, trial.hparams.micro_batch)
        if kind in seen:
            continue
        seen.add(kind)
        memory = step_memory(trial)
        smallest = micro_batch_multiple(trial)
        if memory.at(smallest) > HEADROOM * gpu_memory_bytes:
            raise SpecError(
                f"trial {trial.run_name} needs {memory.at(smallest) / 1e9:.2f} GB at a "
                f"micro-batch of {smallest} (experiments/memory_model.py), more than "
                f"{HEADROOM:.0%} of a {gpu_memory_bytes / 1e9:g} GB GPU (--gpu-memory-gb); "
                "valid: fewer layers per trial, a smaller size, or a larger GPU")
