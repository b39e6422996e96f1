"""Data off the critical path, reproducibly.

A trial's DataLoaders decode and augment in worker processes sized from the CPUs the trial
was given, with pinned memory for non-blocking copies on CUDA, persistent workers (started
once per trial, not per epoch) and prefetching. What a sample looks like (its random crop,
its RandAugment ops) is drawn from RNGs seeded by (trial seed, epoch, sample index) alone,
so it depends neither on which worker loaded it nor on how many workers there are: a trial
gives the same batches with 0 or 8 workers, and a trial resumed at epoch k sees the batches
the uninterrupted one saw. The epoch travels with each index (``EpochSampler`` yields
``(epoch, index)``) because a persistent worker holds its own copy of the dataset, which the
main process cannot tell that a new epoch began.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from experiments.parallel import SINGLE, DataParallel, RankBatchSampler
from experiments.trial import AUTO_WORKERS

AUTO = AUTO_WORKERS
MAX_AUTO_WORKERS = 16  # beyond this a single trial's loader gains little and costs memory
PREFETCH_FACTOR = 4  # batches each worker keeps ready


def resolve_num_workers(setting: str | int, cpus: int, in_memory: bool,
                        device: torch.device | str = "cuda") -> int:
    """``auto``: none for data held in memory as tensors (embedded tasks: a worker would cost
    more to feed than the indexing it saves) and none on a CPU device (the trial's cores do
    the compute; a worker takes one from it: 0.69x the samples/s with one worker on 2 cores,
    bench/trial_throughput.py); else every CPU of the trial but the one that drives the GPU,
    at least one, at most ``MAX_AUTO_WORKERS``. An integer is taken as is."""
    if str(setting) == AUTO:
        if in_memory or torch.device(device).type == "cpu":
            return 0
        return min(MAX_AUTO_WORKERS, max(1, cpus - 1))
    n = int(setting)
    if n < 0:
        raise ValueError(f"num_workers must be 'auto' or >= 0 (got {setting!r})")
    return n


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of one trial: its shuffle and the main process's RNGs."""
    return seed * 100_003 + epoch


def micro_seed(seed: int, epoch: int, step: int, index: int) -> int:
    """The seed of one micro-batch's draws (dropout, drop-path, Mixup/CutMix): micro-batch
    ``index`` of optimizer step ``step``, counted over the whole global batch, so that the
    same micro-batch draws the same on one process or on the rank that holds it
    (``experiments.parallel``), and on a retried first step."""
    digest = hashlib.blake2b(f"micro/{seed}/{epoch}/{step}/{index}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seed_all(seed: int) -> None:
    """torch's (CPU and CUDA), ``random``'s and numpy's global RNGs, from one seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # numpy's seeds are 32-bit; torch's and random's are not
    random.seed(seed)


def sample_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """A 63-bit seed for one sample of one epoch, well mixed (neighbouring indices must not
    get neighbouring seeds: some generators' first draws are correlated across such seeds).
    ``copy``: which of a repeated-augmentation sample's copies (0: the first, as before)."""
    key = f"{seed}/{epoch}/{index}" + (f"/{copy}" if copy else "")
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``; shuffled per (seed, epoch) when ``shuffle``. ``set_epoch``
    before each epoch (as with ``DistributedSampler``)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            # torch's DataLoader draws its workers' base seed from a shuffling generator
            # before the permutation; drawing it too keeps every earlier trial's batch order
            torch.empty((), dtype=torch.int64).random_(generator=gen)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = range(self.n)
        for index in order:
            yield self.epoch, index


class RepeatedEpochSampler(EpochSampler):
    """Repeated augmentation (DeiT's, timm's ``RepeatAugSampler`` on one replica): an epoch
    as long as timm makes it, of ``repeats`` consecutive copies of each sampled index. Yields
    ``(epoch, index, copy)``: each copy is augmented from its own seed. timm's shuffle is
    seeded by the epoch alone; here by ``epoch_seed(seed, epoch)``, so trials of different
    seeds differ and a resumed trial sees the uninterrupted one's order."""

    def __init__(self, n: int, seed: int, repeats: int) -> None:
        from timm.data.distributed_sampler import RepeatAugSampler

        super().__init__(n, seed)
        self.repeats = repeats
        self.inner = RepeatAugSampler(range(n), num_replicas=1, rank=0, shuffle=True,
                                      num_repeats=repeats)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:  # type: ignore[override]
        self.inner.set_epoch(epoch_seed(self.seed, self.epoch))
        copies: dict[int, int] = {}
        for index in self.inner:
            copy = copies.get(index, 0)
            copies[index] = copy + 1
            yield self.epoch, index, copy


def draws_random(dataset: Dataset) -> bool:
    """Whether reading a sample may draw random numbers (an augmentation). A TensorDataset
    only indexes tensors; another dataset says so with ``draws_random = False``."""
    if isinstance(dataset, TensorDataset):
        return False
    return bool(getattr(dataset, "draws_random", True))


class SeededSamples(Dataset):
    """``dataset[index]`` with torch's CPU generator, ``random`` and numpy's global RNG seeded
    by ``sample_seed(seed, epoch, index)``, then put back as they were (in the main process,
    with no workers, the training's own draws must not shift). Saving and seeding three RNGs
    costs ~0.13 ms a sample, nothing next to decoding a JPEG but 10% of an epoch of digits
    held in memory: datasets that draw nothing (``draws_random``) are read directly."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self.seeded = draws_random(dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, ...]):
        epoch, index, *copy = key  # (epoch, index, copy) from RepeatedEpochSampler
        if not self.seeded:
            return self.dataset[index]
        s = sample_seed(self.seed, epoch, index, *copy)
        py_state, np_state = random.getstate(), np.random.get_state()
        torch_state = torch.default_generator.get_state()
        torch.default_generator.manual_seed(s)  # CPU only: CUDA's generator is left alone
        random.seed(s)
        np.random.seed(s % 2**32)
        try:
            return self.dataset[index]
        finally:
            torch.default_generator.set_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)


def loader_settings(num_workers: int, device: torch.device, *, persistent: bool = True
                    ) -> dict[str, object]:
    """DataLoader keyword arguments for a trial's loaders. A generator of their own: DataLoader
    draws its workers' base seed at every ``iter()``, from the global RNG when it has none,
    which would shift the trial's dropout and Mixup draws. ``persistent``: the workers live
    as long as the loader (the training loader); the validation loader's start at each
    evaluation and exit after it: kept alive between evaluations, they cost the training
    13.0 vs 16.7 samples/s on 2 cores (bench/trial_throughput.py's setup), for one fork an
    epoch saved."""
    kw: dict[str, object] = {"num_workers": num_workers, "pin_memory": device.type == "cuda",
                             "generator": torch.Generator().manual_seed(0)}
    if num_workers > 0:
        kw.update(persistent_workers=persistent, prefetch_factor=PREFETCH_FACTOR)
    return kw


def train_loader(dataset: Dataset, batch_size: int, seed: int, *, drop_last: bool,
                 repeats: int = 0, parallel: DataParallel = SINGLE, **settings: object
                 ) -> tuple[DataLoader, EpochSampler]:
    """The trial's one training loader (its workers live as long as it does) and the sampler
    whose ``set_epoch`` moves it to the next epoch; ``repeats`` > 1: repeated augmentation.
    Data-parallel, the loader yields this rank's slice of each global batch (its
    ``batch_sampler``: ``experiments.parallel.RankBatchSampler``, which knows their sizes)."""
    n = len(dataset)  # type: ignore[arg-type]
    sampler = RepeatedEpochSampler(n, seed, repeats) if repeats > 1 else EpochSampler(n, seed)
    samples = SeededSamples(dataset, seed)
    if parallel.world == 1:
        return DataLoader(samples, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          **settings), sampler  # type: ignore[arg-type]
    batches = RankBatchSampler(sampler, batch_size, drop_last, parallel)
    return DataLoader(samples, batch_sampler=batches, **settings), sampler  # type: ignore[arg-type]
