"""What one training step of a trial holds in GPU memory, from the plan alone, and so the
largest micro-batch that fits: the GPU share a trial asks for, the dry run's micro-batch
column, and ``--micro-batch auto`` (``experiments.accumulation``) all read it.

A step holds a fixed part (the frozen layers' weights, the trained weights with their
gradients and AdamW's two moments, the CUDA context) and a part per sample: the activations
autograd keeps for the backward pass. Per token of one layer and per unit of its width, bf16
autocast keeps (measured on CPU with ``torch.autograd.graph.saved_tensors_hooks``, the slope
between batches 2 and 4, so autocast's weight copies are not counted; bench/activation_bytes.py
prints them again):

- a timm ViT block that trains (MLP ratio 4): 36.8 bytes;
- a frozen LLaMA layer (SwiGLU, 2.69x): 32.7 bytes (a frozen linear keeps no input: the
  input's gradient needs only the weight);
- the same layer when it trains: 56.1 bytes.

SDPA's fused kernels keep no T x T score matrix, so these are linear in the tokens. The
visual encoder is sized from the task's cost row (``TaskCost``): its FLOPs per sample over
one ViT layer's FLOPs at the insertion width and tokens give its depth in ViT layers; a task
whose encoder is not a ViT (a convolution stem, a point encoder) is estimated as the ViT of
the same FLOPs, a heuristic. Tasks without a cost row are sized at ``MAX_TOKENS`` tokens and
the block alone. Nothing here is measured on a GPU: the allocator's fragmentation, pinned
batches and cuDNN workspaces are the ``HEADROOM`` left free, and a CUDA trial under ``auto``
confirms the choice on its first step (halving on out-of-memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from encoders.lm.controls import get_control
from encoders.lm.registry import get_family
from experiments.cost_model import has_linears
from experiments.tasks.registry import task_entry
from experiments.trial import AUTO_MICRO_BATCH, TrialSpec

TRAINED_VIT_BYTES = 37  # per token, layer and unit of width, bf16 autocast (measured 36.8)
FROZEN_LM_BYTES = 33  # a frozen LM layer (measured 32.7)
TRAINED_LM_BYTES = 56  # an LM layer that trains (measured 56.1)
ADAPTER_BYTES = 4  # the adapters' LM-wide activations per token and unit of LM width (bf16)
TRAINED_BYTES_PER_PARAM = 16  # float32 weight, its gradient and AdamW's two moments
OVERHEAD_BYTES = 2 * 10**9  # CUDA context and kernels, the loader's batches, the head, metrics
HEADROOM = 0.9  # of the GPU's memory a plan fills: the rest is the allocator's slack
MAX_TOKENS = 256  # tokens per sample at the insertion point of a task without a cost row


@dataclass(frozen=True)
class StepMemory:
    """Bytes of one training step: ``fixed`` plus ``per_sample`` x the micro-batch."""

    fixed: float
    per_sample: float

    def at(self, batch: int) -> float:
        return self.fixed + self.per_sample * batch


def vit_layers(encoder_gflops: float, tokens: int, width: int) -> float:
    """The encoder's depth in ViT layers of ``width`` over ``tokens``: its forward FLOPs over
    one layer's (24 d^2 + 4 T d per token, 2 per multiply-add as FlopCounterMode counts)."""
    per_layer = tokens * (24 * width * width + 4 * tokens * width)
    return encoder_gflops * 1e9 / per_layer


def step_memory(trial: TrialSpec) -> StepMemory:
    """The trial's training step in bytes (see the module's docstring for the constants)."""
    row = task_entry(trial.task).cost
    tokens = row.tokens if row is not None else MAX_TOKENS
    fixed, per_sample = float(OVERHEAD_BYTES), 0.0
    if row is not None:  # the visual encoder: it trains (--encoder-train frozen: an upper bound)
        depth = vit_layers(row.encoder_gflops, tokens, row.width)
        per_sample += depth * tokens * row.width * TRAINED_VIT_BYTES
        fixed += row.encoder_gflops * 1e9 / (2 * tokens) * TRAINED_BYTES_PER_PARAM
    arm = get_control(trial.control)
    if arm.per_lm and has_linears(arm):  # the LM-wide side of the two linear maps
        hidden = get_family(trial.family).size(trial.size).hidden_size
        per_sample += tokens * hidden * ADAPTER_BYTES
    if trial.layers:
        fam = get_family(trial.family)
        size = fam.size(trial.size)
        trained = arm.trains_lm or arm.weights_source == "none"
        layers = len(trial.layers)
        params = fam.layer_params(trial.size) * layers
        fixed += params * (TRAINED_BYTES_PER_PARAM if trained else size.itemsize)
        per_token = TRAINED_LM_BYTES if trained else FROZEN_LM_BYTES
        per_sample += tokens * size.hidden_size * per_token * layers
    return StepMemory(fixed, per_sample)


def fits(memory: StepMemory, batch: int, gpu_bytes: float) -> bool:
    return memory.at(batch) <= HEADROOM * gpu_bytes


def largest_fitting(batch_size: int, memory: StepMemory, gpu_bytes: float,
                    multiple_of: int = 1) -> int | None:
    """The largest divisor of ``batch_size`` (a multiple of ``multiple_of``: Mixup's even
    batches) whose step fits ``gpu_bytes``: every optimizer step then takes the same number
    of equal micro-batches. None when the smallest does not fit."""
    for micro in sorted(divisors(batch_size), reverse=True):
        if micro % multiple_of == 0 and fits(memory, micro, gpu_bytes):
            return micro
    return None


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def micro_batch_multiple(trial: TrialSpec) -> int:
    """2 where Mixup/CutMix mix each micro-batch (timm's Mixup needs an even batch), else 1."""
    hp = trial.hparams
    return 2 if task_entry(trial.task).classification and (hp.mixup or hp.cutmix) else 1


def planned_micro_batch(trial: TrialSpec, gpu_bytes: float | None) -> int | None:
    """The micro-batch a trial runs at: its ``--micro-batch`` as given, else (``auto``) the
    whole batch without a GPU (``gpu_bytes`` None: host memory is not what limits a CPU
    trial's batch) or the largest that fits ``gpu_bytes``; None when not even the smallest
    does."""
    hp = trial.hparams
    if hp.micro_batch != AUTO_MICRO_BATCH:
        return int(hp.micro_batch)
    if gpu_bytes is None:
        return hp.batch_size
    return largest_fitting(hp.batch_size, step_memory(trial), gpu_bytes,
                           micro_batch_multiple(trial))
