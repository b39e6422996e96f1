"""A trial's own cost: FLOP counts equal a hand count and leave the model, its grads and the
RNG untouched; device peaks come from the table or an override; peak memory grows."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.cost import (
    PEAK_BF16_FLOPS,
    PEAK_TFLOPS_ENV,
    count_flops,
    device_name,
    mfu,
    peak_flops,
    peak_memory_bytes,
    reset_peak_memory,
)

B, D, I, H, O = 4, 3, 5, 7, 2  # batch, input, first, second and output widths


def linears(frozen: int) -> nn.Sequential:
    """Three bias-free linears D -> I -> H -> O; layer ``frozen`` gets no gradient."""
    model = nn.Sequential(nn.Linear(D, I, bias=False), nn.GELU(), nn.Linear(I, H, bias=False),
                          nn.GELU(), nn.Linear(H, O, bias=False))
    model[2 * frozen].requires_grad_(False)
    return model


# Hand count. A linear's forward is 2*B*fan_in*fan_out (one multiply-add per weight per
# sample); its backward is that again for the input gradient (only if something before it
# needs grad) and again for the weight gradient (only if it is trainable). GELU and the
# cross-entropy are not matmuls: FlopCounterMode counts them as 0.
FORWARD = 2 * B * (D * I + I * H + H * O)
BACKWARD = {
    # trainable first: weight grad only (its input needs none); frozen middle: input grad
    # only; trainable last: both
    1: 2 * B * (D * I + I * H + 2 * H * O),
    # frozen first: nothing (nothing before it needs grad); the rest: weight grad only for
    # the middle (its input, the frozen layer's output, needs no grad), both for the last
    0: 2 * B * (0 + I * H + 2 * H * O),
}


@pytest.mark.parametrize("frozen", [1, 0])
def test_flops_equal_the_hand_count(frozen):
    torch.manual_seed(0)
    model = linears(frozen)
    x, y = torch.randn(B, D), torch.randint(0, O, (B,))
    flops = count_flops(model, x, y, F.cross_entropy)
    assert flops.forward_per_sample == FORWARD / B
    assert flops.train_step_per_sample == (FORWARD + BACKWARD[frozen]) / B


def test_flops_of_multi_part_inputs_and_a_frozen_model():
    """``inputs`` as a tuple goes in as ``model(*inputs)``; with nothing trainable there is no
    backward at all (the training step is the forward)."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(D, O, bias=False), nn.Linear(I, O, bias=False)

        def forward(self, x, z):
            return self.a(x) + self.b(z)

    model = Two().requires_grad_(False)
    flops = count_flops(model, (torch.randn(B, D), torch.randn(B, I)), torch.zeros(B).long(),
                        F.cross_entropy)
    assert flops.forward_per_sample == flops.train_step_per_sample == 2 * (D * O + I * O)


def test_cpu_attention_is_counted():
    """F.scaled_dot_product_attention's CPU kernel is not in torch's table: counted here as
    the CUDA kernels are (two matmuls forward, five backward)."""

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 8, bias=False)

        def forward(self, x):  # (B, T, 8) -> one head
            q = self.q(x)[:, None]  # (B, 1, T, 8)
            return F.scaled_dot_product_attention(q, q, q)[:, 0].mean(1)

    b, t = 2, 6
    flops = count_flops(Attention(), torch.randn(b, t, 8), torch.zeros(b).long(),
                        F.cross_entropy)
    projection, attention = 2 * t * 8 * 8, 2 * 2 * t * t * 8
    assert flops.forward_per_sample == projection + attention
    # backward: the projection's weight grad (x needs none) + attention's 2.5x forward
    assert flops.train_step_per_sample == 2 * projection + 3.5 * attention


class Noisy(nn.Module):
    """Draws from every RNG in its forward, whatever the mode."""

    def forward(self, x):
        return x + 0 * torch.randn_like(x) + 0 * random.random() + 0 * float(np.random.rand())


def bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), Noisy(), nn.Linear(4 * 6 * 6, 3), nn.BatchNorm1d(3))


def draws() -> tuple:
    return torch.rand(3), random.random(), float(np.random.rand())


def test_count_leaves_no_trace():
    torch.manual_seed(0)
    model = bn_model().train()
    model[0].requires_grad_(False)
    model[7].eval()  # a mixed-mode model keeps its mix
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
    model(x).sum().backward()  # some real training stats and a real grad on the last linear
    for name, p in model.named_parameters():
        if name != "6.weight":
            p.grad = None  # the usual state: None; one real grad kept to check it survives
    grad = model[6].weight.grad
    grad_before = grad.clone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]

    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    assert count_flops(model, x, y, F.cross_entropy).forward_per_sample > 0
    after_call = draws()
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    without_call = draws()

    assert torch.equal(after_call[0], without_call[0])
    assert after_call[1:] == without_call[1:]
    state = model.state_dict()
    assert state.keys() == before.keys()
    assert all(torch.equal(state[k], before[k]) for k in before), "buffers or weights changed"
    assert [m.training for m in model.modules()] == modes
    assert model[6].weight.grad is grad and torch.equal(grad, grad_before)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "6.weight")


def test_count_restores_on_error():
    model = bn_model().train()

    def broken_loss(out, target):
        raise RuntimeError("boom")

    torch.manual_seed(3)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(RuntimeError, match="boom"):  # after Noisy drew from every RNG
        count_flops(model, x, torch.zeros(2).long(), broken_loss)
    after_call = torch.rand(2)
    torch.manual_seed(3)
    torch.randn(2, 1, 8, 8)
    assert torch.equal(after_call, torch.rand(2))
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_digits_model():
    from experiments.tasks.digits import DIGITS

    model = DIGITS.build_model(None)
    x, y = DIGITS.example(8)
    flops = count_flops(model, x, y, F.cross_entropy)
    assert flops.forward_per_sample > 0
    assert 2 <= flops.train_step_per_sample / flops.forward_per_sample <= 3.5


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA GH200 480GB", "GH200"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA A10", "A10"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", "L40"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA B200", "B200"),
])
def test_peak_flops_from_the_table(name, key, monkeypatch):
    monkeypatch.delenv(PEAK_TFLOPS_ENV, raising=False)
    assert peak_flops(name) == PEAK_BF16_FLOPS[key]


def test_peak_flops_known_figures_and_unknowns(monkeypatch):
    monkeypatch.delenv(PEAK_TFLOPS_ENV, raising=False)
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("nvidia h200") == 989.4e12  # case-insensitive
    for unknown in ("Tesla T4", "cpu", "NVIDIA RTX A1000 6GB Laptop GPU",
                    "Tesla V100-SXM2-16GB"):
        assert peak_flops(unknown) is None, unknown


def test_peak_flops_override(monkeypatch):
    monkeypatch.delenv(PEAK_TFLOPS_ENV, raising=False)
    assert peak_flops("NVIDIA H100 80GB HBM3", override_tflops=500) == 500e12
    assert peak_flops("Tesla T4", override_tflops=65) == 65e12
    monkeypatch.setenv(PEAK_TFLOPS_ENV, "123.5")
    assert peak_flops("Tesla T4") == 123.5e12
    assert peak_flops("NVIDIA H200") == 123.5e12
    assert peak_flops("NVIDIA H200", override_tflops=100) == 100e12  # the argument wins
    monkeypatch.setenv(PEAK_TFLOPS_ENV, "fast")
    with pytest.raises(ValueError, match=PEAK_TFLOPS_ENV):
        peak_flops("NVIDIA H200")


def test_mfu():
    assert mfu(494.7e12, 989.4e12) == pytest.approx(0.5)
    assert mfu(1e12, None) is None
    assert mfu(1e12, 0.0) is None


def test_device_name():
    assert device_name("cpu") == device_name(torch.device("cpu")) == "cpu"
    if torch.cuda.is_available():
        assert device_name("cuda") == torch.cuda.get_device_name(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_cpu_peak_memory_grows():
    """Past the process's earlier peak (the peak RSS cannot be reset), in a fresh process so
    that the test runner's own peak does not decide how much to allocate."""
    script = (
        "import os, torch\n"
        "from experiments.cost import peak_memory_bytes, reset_peak_memory\n"
        "reset_peak_memory('cpu')  # a no-op on CPU\n"
        "before = peak_memory_bytes('cpu')\n"
        "rss = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "x = torch.ones(before - rss + 200 * 2**20, dtype=torch.uint8)  # touched\n"
        "print(before, peak_memory_bytes('cpu'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    before, after = map(int, out.stdout.split())
    assert before > 10 * 2**20  # bytes, not kilobytes: python + torch hold far more than 10 MiB
    assert after - before >= 190 * 2**20
    assert peak_memory_bytes("cpu") > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory():
    reset_peak_memory("cuda")
    base = peak_memory_bytes("cuda")
    x = torch.ones(64 * 2**20, dtype=torch.uint8, device="cuda")
    assert peak_memory_bytes("cuda") - base >= 64 * 2**20
    del x
    reset_peak_memory("cuda")
    assert peak_memory_bytes("cuda") < base + 64 * 2**20
