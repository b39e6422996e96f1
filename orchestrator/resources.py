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
from experiments.trial import TrialSpec, check_micro_batch

if TYPE_CHECKING:  # the dry run's estimate reads the shares without importing Ray
    from ray.tune import PlacementGroupFactory

GPU_SHARE_STEPS = 8  # shares are multiples of 1/8 GPU


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


def per_trial_resources(
    cluster_gpus: float, gpus_per_trial: float | None, gpu_memory_bytes: float,
    cpus_per_trial: int | None = None, per_gpu: float = 0.0,
) -> Callable[[dict], PlacementGroupFactory]:
    """``per_gpu``: ``cpus_per_gpu(ray.nodes())``; ``cpus_per_trial``: the override."""
    from ray.tune import PlacementGroupFactory

    def resources(config: dict) -> PlacementGroupFactory:
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


def check_fits(plan: list[TrialSpec], gpu_memory_bytes: float) -> None:
    """Refuse, in one line, a plan with a trial that no micro-batch fits on one GPU (its
    frozen layers alone may not): a real run would fail it on its first step, after Ray."""
    from orchestrator.spec import SpecError

    seen = set()
    for trial in plan:
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
