"""GPU checks: the block's semantics hold on CUDA in bf16, and a trial trains there."""

from __future__ import annotations

import pytest
import torch

from encoders.lm.frozen_block import FrozenLMBlock
from encoders.lm.layer_loading import load_layers
from encoders.lm.registry import get_family
from experiments.training import run_trial
from experiments.trial import Hyperparameters, TrialSpec
from tests.conftest import save_tiny_opt

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_block_on_cuda_bf16_is_bidirectional_and_matches_fp32(tmp_path):
    _, ckpt = save_tiny_opt(tmp_path / "ckpt", post_ln=True)
    fam = get_family("opt")
    torch.manual_seed(0)
    cpu = FrozenLMBlock(load_layers(fam, ckpt, [2]).layers, 16, 32)
    gpu = FrozenLMBlock(load_layers(fam, ckpt, [2], dtype=torch.bfloat16).layers, 16, 32)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    x = torch.randn(4, 9, 16)
    torch.testing.assert_close(gpu(x.cuda()).float().cpu(), cpu(x), atol=5e-2, rtol=5e-2)
    y = x.clone()
    y[:, -1] += 1
    assert not torch.allclose(gpu(x.cuda())[:, 0], gpu(y.cuda())[:, 0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trial_trains_on_cuda(dtype):
    hp = Hyperparameters(epochs=3, compute_dtype=dtype)
    seen = []
    run_trial(TrialSpec("minilm", "l6", (5,), "digits", "random", 0, hp),
              lambda m, s: seen.append(m), device="cuda")
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]
    if dtype == "bfloat16":  # autocast over the whole model, TF32, fused AdamW, MFU
        last = seen[-1]
        assert (last["autocast"], last["tf32"], last["fused_adamw"]) == ("bfloat16", True, True)
        assert last["device_name"] != "cpu" and last["peak_memory_bytes"] > 0
        if last["peak_tflops"]:  # a GPU of the known table
            assert 0 < last["mfu"] < 1
    else:
        assert (seen[-1]["autocast"], seen[-1]["tf32"]) == ("off", False)


def test_image_trial_reads_with_workers_and_pinned_memory(tmp_path):
    """A real-data task on CUDA: workers from the trial's CPUs (auto), pinned batches."""
    from tests.test_images import write_cifar10

    write_cifar10(tmp_path, n_train=40)
    seen = []
    run_trial(TrialSpec("", "", (), "cifar10", "none", 0, Hyperparameters(epochs=2)),
              lambda m, s: seen.append(m), data_dir=tmp_path, device="cuda", cpus=3)
    assert seen[-1]["num_workers"] == 2 and seen[-1]["samples_per_s"] > 0
