"""What a trial costs: parameters, FLOPs per sample, throughput, memory, MFU.

The names below are the contract between the trial (which measures) and the driver (which
records): a worker's result carries every key of ``COST_PARAMS`` (constants of the trial:
logged once, as MLflow params), ``COST_METRICS`` (per epoch: MLflow metrics) and
``RUN_SETTINGS`` (how the trial ran on the machine it landed on: tags, re-set when a retry
lands elsewhere).
"""

from __future__ import annotations

import random
import resource
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from experiments.batches import Batch, batch_len, forward
from experiments.gpu_peaks import (  # noqa: F401  (the peaks' home; re-exported for users)
    PEAK_BF16_FLOPS,
    PEAK_TFLOPS_ENV,
    mfu,
    peak_flops,
)

# Constants of a trial: MLflow params (not metric histories).
COST_PARAMS = (
    "frozen_params",  # parameters of the inserted module that do not train
    "inserted_trainable_params",  # parameters of the inserted module that train
    "lm_block_params",  # visual-block: the LM layers' count it is sized to ("" elsewhere)
    "visual_block_params",  # visual-block: its own count ("" elsewhere)
    "trainable_params",  # parameters the optimizer updates
    "gflops_forward_per_sample",  # FlopCounterMode, one forward, per sample
    "gflops_train_step_per_sample",  # forward + backward (frozen weights get no weight grads)
    "device_name",  # torch.cuda.get_device_name() or "cpu"
    "peak_tflops",  # the device's dense bf16 peak used for MFU ("" when unknown / CPU)
)

# Measured each epoch: MLflow metrics.
COST_METRICS = (
    "samples_per_s",  # training samples per second of the epoch's training phase
    "step_time_s",  # training-phase seconds per optimizer step
    "data_wait_share",  # share of the training phase spent waiting for the next batch
    "peak_memory_bytes",  # CUDA max allocated, or the process's peak RSS on CPU
    "achieved_tflops",  # train-step FLOPs per sample x samples/s, in TFLOP/s
    "mfu",  # achieved / peak (CUDA with a known or given peak only)
)

# How the trial ran where it landed: MLflow tags (set again when a retry lands elsewhere).
RUN_SETTINGS = (
    "num_workers",  # DataLoader worker processes ("auto" resolved)
    "cpus",  # CPUs Ray gave the trial (each of its processes, data-parallel)
    "data_parallel",  # processes training it data-parallel (--gpus-per-trial N > 1), else 1
    "autocast",  # the autocast dtype, or "off"
    "tf32",  # TF32 allowed for float32 matmuls/convolutions (CUDA)
    "fused_adamw",  # AdamW's fused kernel in use
    "compile",  # the model ran under torch.compile
    # The global batch's micro-batches (experiments/accumulation.py): tags, not params, as a
    # retry on another GPU may fit another micro-batch under --micro-batch auto.
    "global_batch",  # samples per optimizer step (--batch-size)
    "micro_batch_size",  # samples per forward ("auto" resolved)
    "accum_steps",  # micro-batches per optimizer step
    "accumulation_exact",  # "exact", or what makes k micro-batches differ from the batch
)


@dataclass(frozen=True)
class StepFlops:
    """FLOPs (not GFLOPs) per sample of one forward and of one training step."""

    forward_per_sample: float
    train_step_per_sample: float  # forward + loss + backward; no optimizer step


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                   **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's table counts the CUDA attention kernels but not the CPU one, which
# F.scaled_dot_product_attention (timm's fused attention) calls: it would count 0 on CPU.
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward,
}


def count_flops(model: nn.Module, inputs: Batch, target: Batch,
                loss_fn: Callable[..., torch.Tensor]) -> StepFlops:
    """Count one forward and one training step of ``model`` on this batch, per sample.

    FlopCounterMode counts what autograd really runs: a frozen weight gets no weight gradient,
    and a layer with nothing trainable before it computes no input gradient, so a frozen
    block costs less than a third of a trainable one. Counts depend on shapes only, so one
    batch per trial is enough; pass the uncompiled module. It runs in eval mode (no dropout,
    BatchNorm on its running stats) with grad enabled, and leaves no trace: every module's
    train/eval flag, the buffers, each parameter's ``.grad`` (the same tensor, or None) and
    the RNG states (torch CPU and CUDA, ``random``, numpy) are as before, so a trial that
    counts is the same trial as one that does not. On CUDA it raises the allocator's peak:
    call ``reset_peak_memory`` after it.
    """
    n = batch_len(inputs)
    with _untouched(model):
        model.eval()
        with torch.enable_grad(), FlopCounterMode(display=False,
                                                  custom_mapping=_CPU_ATTENTION) as counter:
            out = forward(model, inputs)
            forward_flops = counter.get_total_flops()
            loss = loss_fn(out, target)
            if loss.requires_grad:  # something is trainable
                loss.backward()
            step_flops = counter.get_total_flops()
        del out, loss
    return StepFlops(forward_flops / n, step_flops / n)


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore modes, buffers, grads and RNG states on exit (even on an error)."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    buffers = [(m, name, b, b.clone()) for m in model.modules()
               for name, b in m.named_buffers(recurse=False)]
    rng = rng_states()
    for p, _ in grads:
        p.grad = None  # a fresh backward, not accumulated into (and changing) the trial's grads
    try:
        yield
    finally:
        for p, grad in grads:
            p.grad = grad
        with torch.no_grad():
            for m, name, b, saved in buffers:
                setattr(m, name, b)
                b.copy_(saved)
        for m, training in modes:
            m.training = training
        set_rng_states(rng)


def rng_states() -> tuple:
    """Every RNG a step draws from: torch's (CPU, and CUDA once initialised), ``random``'s
    and numpy's; ``set_rng_states`` puts them back."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def set_rng_states(states: tuple) -> None:
    cpu, cuda, python, numpy = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(python)
    np.random.set_state(numpy)


def saved_activation_bytes(run: Callable[[], object]) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass while ``run()``
    builds its graph (``saved_tensors_hooks``; each storage once): what a training step holds
    beyond the weights, measured on any device. ``experiments/memory_model.py``'s constants
    come from it (bench/activation_bytes.py)."""
    kept: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        kept[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(kept.values())


def device_name(device: torch.device | str) -> str:
    """What the run records as ``device_name``, and what ``peak_flops`` looks up."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def peak_memory_bytes(device: torch.device | str) -> int:
    """The most memory the trial has held: CUDA's allocator peak since the last reset, or on
    CPU the process's peak resident set (its whole life: it cannot be reset)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def reset_peak_memory(device: torch.device | str) -> None:
    """Start CUDA's peak anew (after a FLOP count, say); a no-op on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
