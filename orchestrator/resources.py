"""Per-trial resources from the plan: the block's memory decides a trial's share of a GPU.

Several small-LM trials share one GPU (a MiniLM or OPT-125m layer needs well under a tenth of
an 80 GB card) while a large block gets a larger share, up to a whole GPU; a CPU-only cluster
runs CPU trials (asking for a GPU there would leave every trial PENDING forever).
``--gpus-per-trial`` overrides the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ray.tune import PlacementGroupFactory

from encoders.lm.registry import get_family
from experiments.trial import TrialSpec

GPU_SHARE_STEPS = 8  # shares are multiples of 1/8 GPU
OVERHEAD_BYTES = 2 * 10**9  # CUDA context, the visual encoder, optimizer, data
MAX_TOKENS = 256  # activation estimate: tokens per sample an insertion point may carry
ACTIVATION_COPIES = 16  # per layer and token: attention/FFN intermediates kept for backward


def block_memory_bytes(trial: TrialSpec, itemsize: int = 2) -> int:
    """Frozen weights plus activations of the block, at a bf16 compute dtype by default."""
    if not trial.layers:
        return 0
    fam = get_family(trial.family)
    hidden = fam.size(trial.size).hidden_size
    weights = fam.layer_params(trial.size) * len(trial.layers) * itemsize
    activations = (trial.hparams.batch_size * MAX_TOKENS * hidden * itemsize
                   * ACTIVATION_COPIES * len(trial.layers))
    return weights + activations


def gpu_share(trial: TrialSpec, gpu_memory_bytes: float) -> float:
    need = block_memory_bytes(trial) + OVERHEAD_BYTES
    return min(1.0, math.ceil(need / gpu_memory_bytes * GPU_SHARE_STEPS) / GPU_SHARE_STEPS)


def per_trial_resources(
    cluster_gpus: float, gpus_per_trial: float | None, gpu_memory_bytes: float
) -> Callable[[dict], PlacementGroupFactory]:
    def resources(config: dict) -> PlacementGroupFactory:
        if cluster_gpus < 1:
            return PlacementGroupFactory([{"CPU": 1}])
        share = gpus_per_trial if gpus_per_trial is not None else gpu_share(
            TrialSpec.from_config(config), gpu_memory_bytes)
        return PlacementGroupFactory([{"CPU": 1, "GPU": share}])

    return resources
