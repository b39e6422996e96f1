"""One training pass over the loader: global batches, each one optimizer step over its
micro-batches (``experiments.accumulation``), the loss kept on the device."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from experiments.accumulation import out_of_memory_retry, split_batch
from experiments.batches import batch_len, forward, to_device
from experiments.cost import rng_states, set_rng_states
from experiments.parallel import SINGLE, DataParallel

# On CUDA the loss is checked for NaN/inf every this many steps (a check is a host sync,
# which would stall the GPU's queue every step); on CPU every step, where it costs nothing.
NONFINITE_CHECK_STEPS = 50


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: the trial stops (the sweep goes on)."""


@dataclass(frozen=True)
class EpochStats:
    """One training pass: its mean loss and what it cost. ``seconds`` is the training phase's
    wall time (the GPU's queue drained at its end), FLOP counting excluded. ``micro_batch``:
    the samples per forward it ended with (an out-of-memory on the first step halves it)."""

    loss: float
    samples: int
    steps: int
    seconds: float
    data_wait_s: float  # time spent waiting for the loader's next batch
    micro_batch: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def step_time_s(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    @property
    def data_wait_share(self) -> float:
        return self.data_wait_s / self.seconds if self.seconds > 0 else 0.0


def _check_finite(losses: list[torch.Tensor], steps: list[int], checked: int,
                  epoch: int) -> int:
    """Raise on the first non-finite loss after index ``checked`` (a micro-batch's), naming
    its optimizer step (``steps``, aligned with ``losses``); returns the new mark."""
    if len(losses) > checked:
        recent = torch.stack(losses[checked:])
        bad = ~torch.isfinite(recent)
        if bad.any():
            first = checked + int(bad.nonzero()[0, 0])
            raise NonFiniteLossError(
                f"loss is {losses[first].item()} at epoch {epoch + 1}, step {steps[first]}")
    return len(losses)


def train_epoch(model, loader, optimizer, device, epoch: int = 0, *,
                lr: Callable[[int], float] | None = None, loss_fn=None, mixer=None,
                autocast: Callable[[], AbstractContextManager] = nullcontext,
                scaler: torch.amp.GradScaler | None = None,
                before_first_step: Callable[[object, object], None] | None = None,
                check_every: int | None = None, clip: Callable[[], None] | None = None,
                after_step: Callable[[], None] | None = None,
                micro_batch: int | None = None, retry_out_of_memory: bool = False,
                multiple_of: int = 1, seed_micro: Callable[[int, int], None] | None = None,
                parallel: DataParallel = SINGLE, global_sizes: Sequence[int] | None = None,
                no_sync: Callable[[], AbstractContextManager] = nullcontext) -> EpochStats:
    """One pass; ``lr(step)`` sets the learning rate before each optimizer step (the
    schedule), ``mixer`` turns (x, y) into mixed inputs and soft targets for ``loss_fn`` (the
    task's objective's loss; cross-entropy when not given), ``autocast()`` wraps each forward.
    The loss stays on the device (no host sync per step); ``before_first_step(x, y)`` sees
    the first micro-batch as the model will (the FLOP count), its time left out of the stats.
    ``check_every``: micro-batches between NaN/inf checks (default: 1 on CPU, else
    ``NONFINITE_CHECK_STEPS``); a late check still names the first bad one. ``clip()``
    clips the gradients (unscaled first under a scaler), ``after_step()`` follows each
    step (the EMA's update); a group's ``lr_scale`` multiplies ``lr(step)``.

    ``micro_batch``: samples per forward (None: the loader's whole batch); each loader batch
    is one optimizer step over its micro-batches, their losses weighted by their share.
    ``retry_out_of_memory``: the first step that runs out of memory clears its gradients, puts
    the RNGs back and runs again at the next smaller micro-batch dividing the batch (a
    multiple of ``multiple_of``); the stats name the one it ended with.

    ``seed_micro(step, index)`` seeds the RNGs before micro-batch ``index`` of the step
    (counted over the global batch). Data-parallel (``experiments.parallel``): the loader
    yields this rank's slice of each global batch, ``global_sizes[step]`` the whole batch's
    size (the weights' denominator, times ``parallel.world`` as DDP averages the ranks), and
    every micro-batch but the rank's last runs under ``no_sync()``."""
    model.train()
    device = torch.device(device)
    loss_fn = loss_fn or F.cross_entropy
    check_every = check_every or (1 if device.type == "cpu" else NONFINITE_CHECK_STEPS)
    losses: list[torch.Tensor] = []
    sizes: list[int] = []
    at_step: list[int] = []  # each loss's optimizer step (k losses a step when accumulating)
    checked, wait, excluded = 0, 0.0, 0.0
    start = time.perf_counter()
    batches = iter(loader)
    step = 0

    def accumulate(x, y, micro: int) -> None:
        nonlocal checked, excluded
        n = batch_len(y)
        whole = global_sizes[step] if global_sizes is not None else n
        parts = list(zip(split_batch(x, micro), split_batch(y, micro), strict=True))
        for j, (xi, yi) in enumerate(parts):
            if seed_micro is not None:
                seed_micro(step, parallel.rank * len(parts) + j)
            xi = to_device(xi, device, non_blocking=True)
            yi = to_device(yi, device, non_blocking=True)
            if mixer is not None:
                xi, yi = mixer(xi, yi)
            if before_first_step is not None and step == 0 and not losses:
                t, rng = time.perf_counter(), rng_states()
                before_first_step(xi, yi)
                set_rng_states(rng)  # the count draws nothing the step would have drawn
                excluded += time.perf_counter() - t
            with no_sync() if j < len(parts) - 1 else nullcontext():
                with autocast():
                    out = forward(model, xi)  # floating outputs in float32: no bf16 loss
                loss = loss_fn(out, yi)
                losses.append(loss.detach())
                sizes.append(batch_len(yi))
                at_step.append(step)
                if check_every == 1:  # before the step: the weights stay finite
                    checked = _check_finite(losses, at_step, checked, epoch)
                share = (loss if len(parts) == 1 and parallel.world == 1
                         else loss * (batch_len(yi) * parallel.world / whole))
                (scaler.scale(share) if scaler is not None else share).backward()

    def fitting_first_step(x, y, micro: int) -> int:
        nonlocal checked
        rng = rng_states()

        def clear() -> None:  # the failed try leaves no gradient, cached block or RNG draw
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            set_rng_states(rng)

        while True:
            try:
                accumulate(x, y, micro)
                return micro
            except torch.OutOfMemoryError:
                pass  # out of the handler first: its traceback holds the step's activations
            losses.clear()
            sizes.clear()
            at_step.clear()
            checked = 0
            micro = out_of_memory_retry(batch_len(y), micro, multiple_of, clear)

    while True:
        t = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            break
        wait += time.perf_counter() - t
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr(step) * group.get("lr_scale", 1.0)
        optimizer.zero_grad(set_to_none=True)
        micro = micro_batch or batch_len(y)
        if retry_out_of_memory and step == 0:
            micro_batch = micro = fitting_first_step(x, y, micro)
        else:
            accumulate(x, y, micro)
        if scaler is not None:
            if clip is not None:
                scaler.unscale_(optimizer)
                clip()
            scaler.step(optimizer)
            scaler.update()
        else:
            if clip is not None:
                clip()
            optimizer.step()
        if after_step is not None:
            after_step()
        step += 1
        if len(losses) - checked >= check_every:
            checked = _check_finite(losses, at_step, checked, epoch)
    _check_finite(losses, at_step, checked, epoch)
    n = sum(sizes)
    weights = torch.tensor(sizes, dtype=torch.float32, device=device)
    total = (torch.stack(losses).float() * weights).sum().item() if losses else float("nan")
    seconds = time.perf_counter() - start - excluded  # .item() above drained the queue
    return EpochStats(total / max(n, 1), n, step, seconds, wait, micro_batch or 0)
