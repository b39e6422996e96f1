"""What a trial will cost, from the plan alone: the dry run's analytic estimate.

A trial measures its cost when it runs (``experiments.cost``: FlopCounterMode, samples/s,
MFU); this module predicts it before anything runs, from plain data only (the family
registry, the controls table and the task catalog's ``TaskCost`` rows), so the plan path
imports no torch. FLOPs per sample, counted as FlopCounterMode counts them (2 per
multiply-add; matmuls, convolutions and attention, nothing else):

- the visual encoder: its forward (``TaskCost.encoder_gflops``), and 2x that backward (all of
  it trains);
- the inserted module, over the block's sequences (``TaskCost.sequences``, T tokens in all):
  LM layers ``2 x params x T`` plus attention ``4 x T^2 x hidden`` per layer and sequence;
  the two adapters (or the MLP control's two linears of the same shapes) ``2 x 2 x width x
  hidden x T``; the visual block ``2 x params x T`` plus its attention at the encoder's width;
- backward: a weight that trains costs 2x its forward (input and weight gradients), a frozen
  one 1x (input gradients only: the encoder below still trains), attention 2x whatever trains
  (no weights: dQ, dK, dV and the scores' gradient).

A trial runs ``epochs x train_samples`` training steps' samples and ``epochs x val_samples``
validation forwards (twice with an EMA, which is evaluated beside the model). GPU-hours are
its FLOPs at ``peak x MFU``: both assumptions, stated with every estimate. Small models reach
far less than the assumed MFU (launch and data overheads dominate them), so for them the
hours are a lower bound. ``tests/test_cost_estimate.py`` checks the formulas against
FlopCounterMode on real blocks and every control.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

from encoders.lm.controls import Control, get_control
from encoders.lm.registry import get_family
from experiments.gpu_peaks import PEAK_BF16_FLOPS, PEAK_TFLOPS_ENV, peak_flops
from experiments.tasks.catalog import TaskCost
from experiments.tasks.registry import task_entry
from experiments.trial import TrialSpec

# The MFU a GPU trial is assumed to reach: the trial-cost issue's goal, not a measurement.
ASSUMED_MFU = 0.35
DEFAULT_GPU = "H100"  # a key of PEAK_BF16_FLOPS: the H100 SXM, 989.4 TFLOP/s dense bf16
TRAINED_BACKWARD = 2.0  # x forward: input and weight gradients
FROZEN_BACKWARD = 1.0  # x forward: input gradients only
ATTENTION_BACKWARD = 2.5  # x forward, trained or frozen (no weights): SDPA recomputes the scores


@dataclass(frozen=True)
class GPU:
    """The GPU an estimate assumes: what the output calls it, its dense bf16 peak and MFU."""

    name: str
    peak_flops: float  # FLOP/s
    mfu: float = ASSUMED_MFU

    @property
    def flops_per_s(self) -> float:
        return self.peak_flops * self.mfu


def assumed_gpu(peak_tflops: float | None = None, mfu: float = ASSUMED_MFU) -> GPU:
    """``--peak-tflops``, else ``$LMBLOCKS_PEAK_TFLOPS`` (ValueError when it is not a
    number), else the H100 of the peak table."""
    if peak_tflops is not None:
        return GPU(f"--peak-tflops {peak_tflops:g}", peak_tflops * 1e12, mfu)
    if os.environ.get(PEAK_TFLOPS_ENV):
        peak = peak_flops("", None)
        return GPU(f"{PEAK_TFLOPS_ENV}={os.environ[PEAK_TFLOPS_ENV]}", peak, mfu)
    return GPU(f"{DEFAULT_GPU} SXM (default)", PEAK_BF16_FLOPS[DEFAULT_GPU], mfu)


@dataclass(frozen=True)
class StepCost:
    """FLOPs per sample of one forward and one training step (forward + backward)."""

    forward: float
    train_step: float

    def __add__(self, other: StepCost) -> StepCost:
        return StepCost(self.forward + other.forward, self.train_step + other.train_step)


def _part(forward: float, backward: float) -> StepCost:
    """A part whose backward is ``backward`` x its forward."""
    return StepCost(forward, forward * (1 + backward))


def has_linears(arm: Control) -> bool:
    """The control inserts two trainable width <-> hidden linears: the adapters, or the MLP
    control's (``encoders.lm.inserted.MLPBlock``: the adapters' shapes, a GELU and a
    LayerNorm between them, no LM layer)."""
    return arm.adapters or (arm.per_lm and arm.layers == "none")


def inserted_cost(family: str, size: str, n_layers: int, control: str, width: int,
                  sequences: tuple[int, ...]) -> StepCost:
    """FLOPs per sample of the module ``control`` inserts, ``n_layers`` layers of
    ``family/size``, over ``sequences`` tokens of ``width`` (zero for ``none``)."""
    arm = get_control(control)
    cost = StepCost(0.0, 0.0)
    if not arm.per_lm:
        return cost
    fam = get_family(family)
    hidden = fam.size(size).hidden_size
    tokens, squares = sum(sequences), sum(t * t for t in sequences)
    if has_linears(arm):
        cost += _part(2 * 2 * width * hidden * tokens, TRAINED_BACKWARD)
    if not n_layers:
        return cost
    dense = 2 * fam.layer_params(size) * n_layers * tokens
    if arm.weights_source == "none":  # the visual block, sized like the LM layers, trained
        return cost + _part(dense, TRAINED_BACKWARD) + _part(4 * squares * width,
                                                             ATTENTION_BACKWARD)
    backward = TRAINED_BACKWARD if arm.trains_lm else FROZEN_BACKWARD
    return (cost + _part(dense, backward)
            + _part(4 * squares * hidden * n_layers, ATTENTION_BACKWARD))


def encoder_cost(task: TaskCost) -> StepCost:
    """The task's own model (all of it trains)."""
    return _part(task.encoder_gflops * 1e9, TRAINED_BACKWARD)


@dataclass(frozen=True)
class TrialCost:
    """One trial's estimated compute."""

    step: StepCost  # per sample: the encoder and the inserted module
    train_samples: int  # over the whole trial: epochs x the training set
    val_samples: int  # validation forwards over the whole trial
    val_forward: float | None = None  # per sample, where evaluation runs less (auxiliary)

    @property
    def flops(self) -> float:
        val = self.step.forward if self.val_forward is None else self.val_forward
        return self.train_samples * self.step.train_step + self.val_samples * val

    def gpu_hours(self, gpu: GPU) -> float:
        return self.flops / gpu.flops_per_s / 3600


@cache
def _trial_cost(family: str, size: str, n_layers: int, task: str, control: str, epochs: int,
                ema: bool) -> TrialCost | None:
    row = task_entry(task).cost
    if row is None:
        return None
    step = encoder_cost(row) + inserted_cost(family, size, n_layers, control, row.width,
                                             row.sequences)
    evaluated = encoder_cost(row).forward if get_control(control).training_only else None
    return TrialCost(step, epochs * row.train_samples,
                     epochs * row.val_samples * (2 if ema else 1), evaluated)


def trial_cost(trial: TrialSpec) -> TrialCost | None:
    """The trial's estimated compute; None for a task without a cost row in the catalog.
    Cached per cell kind, so a plan of 20,000 trials costs a few thousand lookups."""
    hp = trial.hparams
    return _trial_cost(trial.family, trial.size, len(trial.layers), trial.task, trial.control,
                       hp.epochs, hp.ema_decay > 0)
