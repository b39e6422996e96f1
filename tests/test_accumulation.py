"""Gradient accumulation: one optimizer step over k micro-batches is one step over the batch;
an out-of-memory on the first step halves the micro-batch; the memory model that picks it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import orchestrator.plan  # noqa: F401  (registers the families and tasks)
from experiments.accumulation import exactness, smaller_micro_batch, split_batch
from experiments.batches import forward
from experiments.cost import saved_activation_bytes
from experiments.memory_model import largest_fitting, planned_micro_batch, step_memory
from experiments.tasks.registry import task_for
from experiments.training import run_trial, train_epoch
from experiments.trial import Hyperparameters, TrialSpec, check_micro_batch
from experiments.trial_model import build_trial_model


def digits_model(task="digits", control="pretrained", layers=(5,)):
    spec = TrialSpec("minilm" if layers else "", "l6" if layers else "", layers, task,
                     control, 0, Hyperparameters(batch_size=32))
    built = task_for(task, spec.encoder, None)
    torch.manual_seed(0)
    model = build_trial_model(spec, built, None, torch.float32)[0]
    train, _ = built.build_data(None)
    x = torch.stack([train[i][0] for i in range(32)])
    y = torch.stack([torch.as_tensor(train[i][1]) for i in range(32)])
    return model, x, y


def one_step(model, x, y, micro):
    """One SGD step over the batch (x, y) at ``micro`` samples per forward: the gradients
    it summed and the parameters after it."""
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    grads = []
    stats = train_epoch(model, [(x, y)], opt, "cpu", micro_batch=micro,
                        after_step=lambda: grads.extend(p.grad.clone() for p in params))
    return stats, grads, [p.detach().clone() for p in params]


@pytest.mark.parametrize("micro", [8, 12])  # 4 equal micro-batches; 12 + 12 + 8
def test_one_step_over_micro_batches_is_one_step_over_the_batch(micro):
    model, x, y = digits_model()
    whole, grads, after = one_step(model, x, y, None)
    split, split_grads, split_after = one_step(model, x, y, micro)
    assert (whole.steps, split.steps, split.micro_batch) == (1, 1, micro)
    assert split.loss == pytest.approx(whole.loss, rel=1e-6)
    for a, b in zip(grads, split_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    for a, b in zip(after, split_after, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    moved = max((a - p).abs().max().item() for a, p in zip(
        after, (p for p in model.parameters() if p.requires_grad), strict=True))
    assert moved > 1e-3  # the step changed the weights: the comparison compares something


def test_a_batch_norm_encoder_is_named_inexact():
    model, _, _ = digits_model("digits-convstem")
    assert "BatchNorm2d statistics per micro-batch" in exactness(model, True, False)
    vit, _, _ = digits_model()
    assert exactness(vit, True, False) == "exact"
    assert exactness(vit, False, True) == ("in-batch loss over each micro-batch; one "
                                           "Mixup/CutMix draw per micro-batch")


class RunsOutOfMemory(nn.Module):
    """Dropout (RNG draws) over a linear map; more than ``limit`` samples at once: OOM."""

    def __init__(self, limit: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 3))
        self.limit, self.tries = limit, []

    def forward(self, x):
        self.tries.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.net(x)


def test_out_of_memory_on_the_first_step_halves_and_draws_the_same():
    torch.manual_seed(1)
    data = [(torch.randn(24, 6), torch.randint(0, 3, (24,))) for _ in range(3)]
    fits, direct = RunsOutOfMemory(limit=6), RunsOutOfMemory(limit=6)
    torch.manual_seed(2)
    stats = train_epoch(fits, data, torch.optim.SGD(fits.parameters(), lr=0.1), "cpu",
                        micro_batch=24, retry_out_of_memory=True, multiple_of=2)
    torch.manual_seed(2)
    reference = train_epoch(direct, data, torch.optim.SGD(direct.parameters(), lr=0.1), "cpu",
                            micro_batch=6)
    assert stats.micro_batch == 6 and fits.tries[:3] == [24, 12, 6]  # 24 -> 12 -> 6
    assert set(fits.tries[3:]) == {6}  # every later micro-batch at what the first step found
    assert stats.loss == reference.loss  # the retried step drew the dropout masks it drew
    for a, b in zip(fits.parameters(), direct.parameters(), strict=True):
        assert torch.equal(a, b)
    never = RunsOutOfMemory(limit=1)
    with pytest.raises(torch.OutOfMemoryError, match="micro-batch of 2 .* does not fit"):
        train_epoch(never, data, torch.optim.SGD(never.parameters(), lr=0.1), "cpu",
                    micro_batch=24, retry_out_of_memory=True, multiple_of=2)
    without = RunsOutOfMemory(limit=6)  # a micro-batch given as a number is not second-guessed
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        train_epoch(without, data, torch.optim.SGD(without.parameters(), lr=0.1), "cpu",
                    micro_batch=24)


def test_a_trial_records_its_micro_batches_and_keeps_its_key():
    seen = []
    hp = Hyperparameters(epochs=1, batch_size=32, micro_batch="8")
    spec = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 0, hp)
    run_trial(spec, lambda m, s: seen.append(m), cpus=1)
    assert {k: seen[0][k] for k in ("global_batch", "micro_batch_size", "accum_steps",
                                    "accumulation_exact")} == {
        "global_batch": 32, "micro_batch_size": 8, "accum_steps": 4, "accumulation_exact": "exact"}
    whole = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 0,
                      Hyperparameters(epochs=1, batch_size=32))
    assert spec.key == whole.key  # how many at once is not what the cell is
    assert planned_micro_batch(whole, None) == 32  # auto on a CPU: the whole batch


def test_split_batch_splits_every_part_of_a_multi_part_batch():
    x = (torch.arange(10), torch.arange(10) * 2)
    parts = split_batch(x, 4)
    assert [len(p[0]) for p in parts] == [4, 4, 2]
    assert all(torch.equal(p[1], p[0] * 2) for p in parts)


def test_micro_batch_choices():
    check_micro_batch("auto", 1024)
    check_micro_batch("256", 1024, 2)
    for bad, multiple in (("300", 1), ("0", 1), ("x", 1), ("1", 2)):
        with pytest.raises(ValueError, match=f"bad micro_batch '{bad}' for batch_size 1024"):
            check_micro_batch(bad, 1024, multiple)
    assert smaller_micro_batch(1024, 1024) == 512
    assert smaller_micro_batch(96, 96, 2) == 48 and smaller_micro_batch(96, 48, 2) == 24
    assert smaller_micro_batch(6, 3) == 1 and smaller_micro_batch(6, 2, 2) is None


@pytest.mark.parametrize("task,control,layers", [
    ("digits", "pretrained", (5,)), ("digits", "finetuned", (5,)), ("digits", "none", ()),
    ("digits", "adapters", ()), ("shape-vqa", "pretrained", (5,))])
def test_the_memory_model_is_near_what_autograd_keeps(task, control, layers):
    """Per sample, the model's bytes vs autograd's saved tensors on the trial's own model
    (bf16 autocast, the slope between batches 8 and 16): within 25%."""
    lm = control != "none"
    spec = TrialSpec("minilm" if lm else "", "l6" if lm else "", layers, task, control, 0)
    built = task_for(task, spec.encoder, None)
    model = build_trial_model(spec, built, None, torch.float32)[0]
    train, _ = built.build_data(None)

    def batch(n):
        xs = [train[i][0] for i in range(n)]
        if isinstance(xs[0], tuple):
            return tuple(torch.stack([x[j] for x in xs]) for j in range(len(xs[0])))
        return torch.stack(xs)

    kept = []
    for n in (8, 16):
        x = batch(n)
        with torch.autocast("cpu", torch.bfloat16):
            kept.append(saved_activation_bytes(lambda x=x: forward(model, x)))
    measured = (kept[1] - kept[0]) / 8
    assert 0.75 < step_memory(spec).per_sample / measured < 1.33


def test_the_largest_fitting_micro_batch_divides_the_batch():
    spec = TrialSpec("llama", "1-7b", (31,), "imagenet-vit-small", "pretrained", 0,
                     Hyperparameters(batch_size=1024, mixup=0.8))
    memory = step_memory(spec)
    for gb in (24, 40, 80, 141):
        micro = largest_fitting(1024, memory, gb * 1e9, 2)
        assert 1024 % micro == 0 and micro % 2 == 0
        assert memory.at(micro) <= 0.9 * gb * 1e9
        assert micro == 1024 or memory.at(2 * micro) > 0.9 * gb * 1e9  # the largest
    assert largest_fitting(1024, memory, 1e9) is None  # its frozen layer alone: 0.4 GB + 2 GB


def test_a_batch_norm_trial_records_that_its_micro_batches_are_not_its_batch():
    """Read before evaluation puts the model in eval mode: every epoch's report says it."""
    seen = []
    hp = Hyperparameters(epochs=2, batch_size=32, micro_batch="16")
    run_trial(TrialSpec("", "", (), "digits-convstem", "none", 0, hp),
              lambda m, s: seen.append(m), cpus=1)
    assert [m["accum_steps"] for m in seen] == [2, 2]
    assert all("BatchNorm2d statistics per micro-batch" in m["accumulation_exact"] for m in seen)


def test_a_non_finite_loss_names_its_optimizer_step_not_its_micro_batch():
    from experiments.training import NonFiniteLossError

    model = nn.Linear(4, 3)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    data[2][0][5] = float("nan")  # step 2's second micro-batch of 4: micro-batch 5 overall
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1, step 2$"):
        train_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.0), "cpu",
                    micro_batch=4)
