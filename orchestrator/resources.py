"""Per-trial resources from the plan: the block's memory decides a trial's share of a GPU.

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

from encoders.lm.controls import get_control
from encoders.lm.registry import get_family
from experiments.trial import TrialSpec

if TYPE_CHECKING:  # the dry run's estimate reads the shares without importing Ray
    from ray.tune import PlacementGroupFactory

GPU_SHARE_STEPS = 8  # shares are multiples of 1/8 GPU
OVERHEAD_BYTES = 2 * 10**9  # CUDA context, the visual encoder, optimizer, data
MAX_TOKENS = 256  # activation estimate: tokens per sample an insertion point may carry
ACTIVATION_COPIES = 16  # per layer and token: attention/FFN intermediates kept for backward


TRAINED_BYTES_PER_PARAM = 16  # float32 weight, its gradient and AdamW's two moments


def block_memory_bytes(trial: TrialSpec, itemsize: int = 2) -> int:
    """Frozen weights plus activations of the block, at a bf16 compute dtype by default;
    a block that trains (finetuned, random-trained, the visual block sized like the LM
    layer: controls with layers but no LM weights) holds ``TRAINED_BYTES_PER_PARAM``."""
    if not trial.layers:
        return 0
    fam = get_family(trial.family)
    hidden = fam.size(trial.size).hidden_size
    arm = get_control(trial.control)
    trained = arm.trains_lm or arm.weights_source == "none"
    weights = (fam.layer_params(trial.size) * len(trial.layers)
               * (TRAINED_BYTES_PER_PARAM if trained else itemsize))
    activations = (trial.hparams.batch_size * MAX_TOKENS * hidden * itemsize
                   * ACTIVATION_COPIES * len(trial.layers))
    return weights + activations


def gpu_share(trial: TrialSpec, gpu_memory_bytes: float) -> float:
    need = block_memory_bytes(trial) + OVERHEAD_BYTES
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
