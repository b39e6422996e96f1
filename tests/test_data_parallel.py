"""A data-parallel trial (``experiments/parallel.py``): N processes x 1 micro-batch train as 1
process x N micro-batches. Two gloo processes on CPU, no Ray: the same loss history and
weights as one process accumulating two micro-batches a step."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import orchestrator.plan  # noqa: F401  (registers the families and tasks)
from experiments.accumulation import split_batch
from experiments.loading import EpochSampler
from experiments.parallel import DataParallel, RankBatchSampler, rank_slice
from experiments.tasks.registry import get_task
from experiments.training import run_trial
from experiments.trial import Hyperparameters, TrialSpec

# Dropout and drop-path draw per micro-batch, Mixup/CutMix mix each one: the equivalence needs
# the same draws on the rank that holds a micro-batch as on the one process that runs them all.
HP = Hyperparameters(epochs=1, batch_size=32, warmup_epochs=0, drop_path=0.1, mixup=0.8,
                     cutmix=1.0)
TRIAL = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 3, HP)
METRIC = get_task("digits").metric


def test_each_rank_holds_the_slice_a_single_process_micro_batch_would():
    sampler = EpochSampler(70, seed=1)
    whole = [k for k in sampler]
    ranks = [list(RankBatchSampler(sampler, 32, False, DataParallel(r, 2))) for r in (0, 1)]
    for step, (a, b) in enumerate(zip(*ranks, strict=True)):
        batch = whole[step * 32:(step + 1) * 32]
        assert a + b == batch  # rank 0 the first part, rank 1 the second, in order
        if len(batch) == 32:  # a full batch: the two micro-batches of 16 one process runs
            assert [len(p) for p in split_batch(torch.arange(32), 16)] == [len(a), len(b)]
    assert RankBatchSampler(sampler, 32, False, DataParallel(0, 2)).global_sizes() == [32, 32, 6]
    assert RankBatchSampler(sampler, 32, True, DataParallel(0, 2)).global_sizes() == [32, 32]
    # a last batch smaller than the world cannot give each rank a sample: no rank steps on it
    assert RankBatchSampler(EpochSampler(65, 1), 32, False,
                            DataParallel(1, 2)).global_sizes() == [32, 32]
    assert len(list(RankBatchSampler(EpochSampler(65, 1), 32, False, DataParallel(1, 2)))) == 2
    assert [rank_slice(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]


def _rank(rank: int, world: int, store: str, out: str) -> None:
    """One data-parallel process of TRIAL: rank 0 saves what it reported."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    reports = []
    try:
        run_trial(TRIAL, lambda m, s: reports.append((m, s)), cpus=1,
                  parallel=DataParallel(rank, world))
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save([(m["train_loss"], m[METRIC], s.model) for m, s in reports], out)
    else:
        assert [(m, s) for m, s in reports] == [({"epoch": 1}, None)]


@pytest.mark.timeout(600)
def test_two_gloo_workers_train_as_one_process_with_two_micro_batches(tmp_path: Path):
    out = tmp_path / "rank0.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2,
                       join=True, start_method="spawn")
    parallel = torch.load(out, weights_only=True)

    one: list = []
    single = TrialSpec(  # the same trial in one process, accumulating 2 micro-batches of 16
                       TRIAL.family, TRIAL.size, TRIAL.layers, TRIAL.task, TRIAL.control,
                       TRIAL.seed, Hyperparameters(**{**HP.__dict__, "micro_batch": 16}))
    run_trial(single, lambda m, s: one.append((m["train_loss"], m[METRIC], s.model)),
              cpus=1)
    assert len(parallel) == len(one) == 1
    for (loss_p, acc_p, state_p), (loss_1, acc_1, state_1) in zip(parallel, one, strict=True):
        # the epoch's mean loss over 44 steps, each after the last's update: weights that
        # trained differently (another sample, draw or weight) give another history
        assert loss_p == pytest.approx(loss_1, rel=1e-5, abs=1e-5)
        assert acc_p == pytest.approx(acc_1, abs=1e-9)
        assert state_p.keys() == state_1.keys()
        for k in state_1:
            torch.testing.assert_close(state_p[k], state_1[k], rtol=1e-4, atol=1e-5)
