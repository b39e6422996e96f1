"""DataLoader workers that change nothing but speed: samples seeded by (seed, epoch, index),
the same batches with 0 or 2 workers, and a resumed epoch equal to the uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from experiments.loading import (
    EpochSampler,
    draws_random,
    loader_settings,
    resolve_num_workers,
    train_loader,
)
from experiments.trial import check_num_workers

CPU = torch.device("cpu")


class Augmented(Dataset):
    """Each sample: its index and one draw from each global RNG (as an augmentation would)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int):
        draws = [torch.rand(()).item(), random.random(), float(np.random.rand())]
        return torch.tensor([float(i), *draws]), i


def epochs(workers: int, which=(0, 1), seed: int = 3) -> list[torch.Tensor]:
    loader, sampler = train_loader(Augmented(), 5, seed, drop_last=False,
                                   **loader_settings(workers, CPU))
    out = []
    for epoch in which:
        sampler.set_epoch(epoch)
        out.append(torch.cat([x for x, _ in loader]))
    return out


def test_samples_depend_on_seed_epoch_and_index_not_on_the_workers():
    zero, two = epochs(0), epochs(2)
    for a, b in zip(zero, two, strict=True):
        assert torch.equal(a, b)  # same order, same draws, whichever process read them
    first, second = zero
    assert sorted(first[:, 0].tolist()) == list(range(24))  # every sample once an epoch
    assert first[:, 0].tolist() != second[:, 0].tolist()  # reshuffled per epoch
    by_index = [{int(r[0]): r[1:].tolist() for r in e} for e in zero]
    assert all(by_index[0][i] != by_index[1][i] for i in range(24))  # re-augmented per epoch
    assert len({tuple(v) for v in by_index[0].values()}) == 24  # no two samples alike
    assert not torch.equal(epochs(0, seed=4)[0], first)  # another trial seed, other batches


def test_a_resumed_epoch_sees_the_uninterrupted_batches():
    uninterrupted = epochs(2, which=(0, 1, 2))
    resumed = epochs(2, which=(2,))  # a fresh loader (a restarted worker) at epoch 2
    assert torch.equal(resumed[0], uninterrupted[2])


def test_reading_samples_leaves_the_main_process_rngs_alone():
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    epochs(0)  # no workers: samples are read (and seeded) in this process
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_shuffle_order_is_the_one_earlier_versions_used():
    """In-memory data is read directly, in the order torch's DataLoader drew from a generator
    seeded per (seed, epoch): every finished trial's batches stay what they were."""
    data = TensorDataset(torch.arange(50))
    assert not draws_random(data) and draws_random(Augmented())
    before = DataLoader(data, batch_size=7, shuffle=True,
                        generator=torch.Generator().manual_seed(3 * 100_003 + 4))
    loader, sampler = train_loader(data, 7, 3, drop_last=False, **loader_settings(0, CPU))
    sampler.set_epoch(4)
    assert [b[0].tolist() for b in loader] == [b[0].tolist() for b in before]
    assert list(EpochSampler(3, 0, shuffle=False)) == [(0, 0), (0, 1), (0, 2)]


def test_num_workers_auto_follows_the_trial_cpus():
    assert resolve_num_workers("auto", 8, in_memory=True) == 0  # tensors in memory: none
    assert resolve_num_workers("auto", 8, in_memory=False) == 7  # one CPU drives the GPU
    assert resolve_num_workers("auto", 1, in_memory=False) == 1
    assert resolve_num_workers("auto", 64, in_memory=False) == 16
    assert resolve_num_workers("auto", 8, in_memory=False, device="cpu") == 0  # cores compute
    assert resolve_num_workers("3", 1, in_memory=True, device="cpu") == 3
    check_num_workers("auto"), check_num_workers(0), check_num_workers("4")
    for bad in ("many", -1, "2.5"):
        with pytest.raises(ValueError, match=r"bad num_workers .*valid: auto or an integer"):
            check_num_workers(bad)


def test_loader_settings_pin_and_keep_workers_on_cuda():
    kw = loader_settings(0, CPU)
    assert (kw["num_workers"], kw["pin_memory"], "persistent_workers" in kw) == (0, False, False)
    kw = loader_settings(4, torch.device("cuda"))
    assert kw["pin_memory"] and kw["persistent_workers"] and kw["prefetch_factor"] >= 2
    loader, _ = train_loader(Augmented(), 4, 0, drop_last=True, **loader_settings(2, CPU))
    assert loader.persistent_workers and loader.num_workers == 2
    assert not loader_settings(2, CPU, persistent=False)["persistent_workers"]  # validation
