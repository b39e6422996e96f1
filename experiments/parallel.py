"""A trial data-parallel over N processes: each optimizer step's global batch split across
them, so N workers x 1 micro-batch train exactly as 1 worker x N micro-batches.

What makes the two the same step (``tests/test_data_parallel.py``: gloo, 2 workers, the loss
history to 1e-5):

- **The same samples.** Every rank iterates the trial's one sampler (seeded per (seed,
  epoch), its samples per (seed, epoch, index): ``experiments.loading``) and groups it into
  the global batches a single worker would see; rank r takes the r-th contiguous slice of each
  (``RankBatchSampler``). With ``micro = batch / N`` a single worker's micro-batch r is rank
  r's slice.
- **The same RNG draws.** Dropout, drop-path and Mixup/CutMix draw from RNGs seeded per
  (seed, epoch, step, micro-batch index) (``loading.micro_seed``); rank r's j-th micro-batch
  has the index a single worker's would.
- **The same gradient.** Each micro-batch's mean loss is weighted by its share of the global
  batch, times N (``DistributedDataParallel`` averages the ranks' gradients); the ranks' own
  micro-batches accumulate under ``no_sync``, one all-reduce a step.
- **Nothing frozen is synchronised.** The frozen LM block's parameters are left out of DDP
  (no gradient buckets, no start-up broadcast): each rank reads the same weights itself.

Where it differs from a single process, as DeiT's 8-GPU run does: BatchNorm's running
statistics are rank 0's (DDP broadcasts its buffers each forward); a last global batch smaller
than N is dropped; an out-of-memory is not retried at a smaller micro-batch (ranks must agree
on one): give ``--micro-batch``.

This module knows torch.distributed, not Ray: ``orchestrator.data_parallel`` starts the
processes (Ray Train) and the process group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from experiments.trial import rank_trial  # noqa: F401  (re-exported: a rank's trial)


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the trial's ``world`` processes (a process group is up)."""

    rank: int
    world: int

    @property
    def leader(self) -> bool:
        """Rank 0: it evaluates, measures and reports for the trial."""
        return self.rank == 0


SINGLE = DataParallel(0, 1)


def rank_slice(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous part of a global batch of ``n``: equal parts when
    ``world`` divides ``n``, else the first ``n % world`` ranks take one more."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class RankBatchSampler(Sampler[list]):
    """The global batches of ``sampler`` (``batch_size`` keys, the last one shorter unless
    ``drop_last``), each cut to this rank's slice; a last batch smaller than ``world`` is
    dropped on every rank (each rank must step). ``set_epoch`` moves the inner sampler."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool,
                 parallel: DataParallel) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.parallel = parallel

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    def global_sizes(self) -> list[int]:
        """Every step's global batch size this epoch (what each rank's loss is weighted by)."""
        full, rest = divmod(len(self.sampler), self.batch_size)  # type: ignore[arg-type]
        keep_rest = rest >= self.parallel.world and not self.drop_last
        return [self.batch_size] * full + ([rest] if keep_rest else [])

    def __len__(self) -> int:
        return len(self.global_sizes())

    def __iter__(self) -> Iterator[list]:
        batch: list = []
        steps = len(self)
        step = 0
        for key in self.sampler:
            batch.append(key)
            if len(batch) == self.batch_size:
                yield self._slice(batch)
                batch, step = [], step + 1
        if batch and step < steps:
            yield self._slice(batch)

    def _slice(self, batch: list) -> list:
        start, end = rank_slice(len(batch), self.parallel.rank, self.parallel.world)
        return batch[start:end]


def frozen_names(model: nn.Module) -> list[str]:
    """Parameters that do not train (the frozen LM block): left out of DDP."""
    return [n for n, p in model.named_parameters() if not p.requires_grad]


def unused_parameters(model: nn.Module, x, forward: Callable) -> bool:
    """Whether one training forward/backward on ``x`` leaves a trainable parameter without a
    gradient (a plugin's branch the loss does not reach): DDP must then look for unused
    parameters every step, a graph traversal it otherwise skips."""
    was = model.training
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # BatchNorm's running stats
    model.train()
    out = forward(model, x)
    outs = out if isinstance(out, tuple | list) else (out,)
    sum(o.float().sum() for o in outs if torch.is_tensor(o) and o.is_floating_point()).backward()
    unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    model.train(was)
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    return unused


def wrap(model: nn.Module, device: torch.device, parallel: DataParallel,
         find_unused: bool) -> nn.Module:
    """``model`` under DistributedDataParallel, its frozen parameters ignored (neither
    broadcast at start nor all-reduced); ``model`` itself when there is one process."""
    if parallel.world == 1:
        return model
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, frozen_names(model))
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused)


def no_sync(runner: nn.Module) -> Callable[[], AbstractContextManager]:
    """The context a rank's non-final micro-batches run in: DDP's ``no_sync`` (gradients
    accumulate locally, the step's last backward all-reduces them); nothing otherwise."""
    inner = getattr(runner, "_orig_mod", runner)  # under torch.compile
    if isinstance(inner, DistributedDataParallel):
        return inner.no_sync
    return nullcontext


@dataclass(frozen=True)
class Reduced:
    """An epoch's training figures over every rank."""

    loss: float  # mean over every rank's samples
    samples: int  # every rank's
    seconds: float  # the slowest rank's training phase
    data_wait_s: float  # the slowest rank's wait for its loader
    peak_memory_bytes: float  # the largest rank's


def reduce_epoch(loss: float, samples: int, seconds: float, data_wait_s: float,
                 peak_memory: float, parallel: DataParallel, device: torch.device) -> Reduced:
    """Every rank's figures combined (a collective: every rank calls it): samples summed,
    the loss their weighted mean, times and memory the largest."""
    if parallel.world == 1:
        return Reduced(loss, samples, seconds, data_wait_s, peak_memory)
    on = device if device.type == "cuda" else torch.device("cpu")
    summed = torch.tensor([loss * samples, float(samples)], dtype=torch.float64, device=on)
    largest = torch.tensor([seconds, data_wait_s, peak_memory], dtype=torch.float64, device=on)
    dist.all_reduce(summed)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    total, n = summed.tolist()
    wall, wait, peak = largest.tolist()
    return Reduced(total / n if n else math.nan, int(n), wall, wait, peak)
