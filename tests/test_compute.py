"""The hardware choices of a trial: bf16 autocast, TF32 and fused AdamW on CUDA (set and
recorded), float32 on CPU; torch.compile gives eager's numbers."""

from __future__ import annotations

import pytest
import torch

from experiments.compute import configure, set_tf32
from experiments.trial import Hyperparameters


@pytest.fixture
def restore_tf32():
    yield
    set_tf32(False)


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA")
def test_cuda_trials_autocast_allow_tf32_and_fuse_adamw(restore_tf32):
    """Configuring needs no GPU (the flags and choices are host-side): what a CUDA trial runs
    with, and what its run records."""
    compute = configure(Hyperparameters(), "cuda")
    assert compute.autocast_dtype is torch.bfloat16 and compute.dtype is torch.bfloat16
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert compute.settings() == {"autocast": "bfloat16", "tf32": True, "fused_adamw": True,
                                  "compile": False}
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert compute.optimizer(params, Hyperparameters()).defaults["fused"] is True
    assert compute.scaler() is None  # bf16 has float32's range: no loss scaling

    exact = configure(Hyperparameters(compute_dtype="float32"), "cuda")  # asked for fp32
    assert exact.autocast_dtype is None and not exact.tf32
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"  # not the last trial's TF32

    half = configure(Hyperparameters(compute_dtype="float16"), "cuda")
    assert half.autocast_dtype is torch.float16 and half.scaler() is not None


def test_cpu_trials_compute_in_float32_without_autocast():
    compute = configure(Hyperparameters(compile=True), "cpu")
    assert compute.dtype is torch.float32 and compute.autocast_dtype is None
    assert compute.settings() == {"autocast": "off", "tf32": False, "fused_adamw": False,
                                  "compile": True}
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert not compute.optimizer(params, Hyperparameters()).defaults["fused"]
    with compute.autocast():
        assert not torch.is_autocast_enabled("cpu")
    bf16 = configure(Hyperparameters(compute_dtype="bfloat16"), "cpu")  # the block only
    assert bf16.dtype is torch.bfloat16 and bf16.autocast_dtype is None


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """torch.compile (inductor, on CPU) of a real task's model: same outputs and gradients
    as eager within float tolerance (a compiled sweep: tests/test_sweep_e2e.py)."""
    from experiments.tasks.registry import get_task

    task = get_task("digits")
    torch.manual_seed(0)
    model = task.build_model(None)
    x, _ = task.example(16)
    compiled = torch.compile(model)
    eager_out = model(x)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled_out = compiled(x)
    compiled_out.square().mean().backward()
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-5)
    for p, g in zip(model.parameters(), eager_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)
