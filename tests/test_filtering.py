"""The information-filtering measures: hand-computed values, then a real probe of a model."""

from __future__ import annotations

import math

import pytest
import torch

from encoders.lm.controls import build_block
from experiments.datasets.digits import build_digits as build_data
from experiments.probe import concentration, probe, token_activation, token_frequency
from experiments.tasks.digits import build_model, ink_patches


def test_concentration_of_a_hand_built_map():
    values = torch.tensor([[1.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    informative = torch.tensor([[False, False, True, True], [True, False, False, False]])
    # sample 1: 2 of 4 on informative tokens; sample 2: 0 of 5
    assert concentration(values, informative) == pytest.approx((0.5 + 0.0) / 2)
    uniform = torch.ones(1, 16)
    assert concentration(uniform, torch.arange(16).lt(4)[None]) == pytest.approx(0.25)


def test_activation_is_centred_and_frequency_is_the_fft_phase_norm():
    tokens = torch.zeros(1, 3, 4)
    tokens[0, 0] = torch.tensor([3.0, 4.0, 0.0, 0.0])
    shifted = tokens + 7.0  # a shared offset is not activation
    assert torch.allclose(token_activation(shifted), token_activation(tokens))
    mean = tokens[0].mean(0)
    assert token_activation(tokens)[0, 0] == pytest.approx(float((tokens[0, 0] - mean).norm()))
    delta = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]]])
    # FFT of e_1 is (1, -i, -1, i): phases 0, -pi/2, pi, pi/2; a constant has phase 0
    freq = token_frequency(delta)[0]
    assert freq[0] == pytest.approx(math.pi * math.sqrt(1.5), rel=1e-5)
    assert freq[1] == pytest.approx(0.0, abs=1e-6)


def test_ink_patches_follow_timm_patch_order():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 7] = 1.0  # top-right pixel: patch (row 0, col 3) = token 3
    x[0, 0, 5, 0] = 0.2  # below the ink threshold
    mask = ink_patches(x)
    assert mask.shape == (1, 16) and mask[0].nonzero().flatten().tolist() == [3]


@pytest.mark.parametrize("control", ["pretrained", "none"])
def test_probe_of_a_model_measures_around_the_block(control):
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control=control, seed=0,
                           visual_dim=64)
    model = build_model(block).train()
    x = torch.stack([build_data()[1][i][0] for i in range(8)])
    expected = model.eval()(x)
    model.train()
    result = probe(model, x, ink_patches(x))
    for name, m in result.maps.items():
        assert m.shape == (8, 16), name
    # the class token's attention over the patches: what it does not give itself
    assert ((result.maps["cls_attn"] > 0) & (result.maps["cls_attn"].sum(-1, keepdim=True) < 1)).all()
    if control == "none":
        assert torch.equal(result.maps["act_before"], result.maps["act_after"])
    else:
        assert not torch.allclose(result.maps["act_before"], result.maps["act_after"])
    # every digit has ink: each map has a concentration and a best-threshold mIoU
    assert set(result.metrics()) == {f"{kind}_{k}" for k in result.maps for kind in ("conc", "miou")}
    assert ("lm_cls_attn" in result.maps) == (control == "pretrained")
    assert all(0 < v < 1 for v in result.scores.values())
    # the probe leaves the model as it found it
    assert model.training and all(b.attn.fused_attn for b in model.blocks[:2])
    assert torch.allclose(model.eval()(x), expected)


def test_activation_of_a_padded_sequence_is_centred_over_its_real_tokens():
    from experiments.probe import token_activation

    x = torch.randn(2, 5, 4)
    x[0, 3:] = 50.0  # padding slots holding anything
    real = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    act = token_activation(x, real)
    torch.testing.assert_close(act[0, :3], token_activation(x[:1, :3])[0])
    torch.testing.assert_close(act[1], token_activation(x)[1])
