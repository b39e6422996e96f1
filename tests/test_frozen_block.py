"""Semantics of the inserted block: bidirectional, no positions, frozen, eval, grads flow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encoders.lm.block_options import ADAPTER_INITS
from encoders.lm.controls import build_block, get_control, list_controls
from encoders.lm.frozen_block import FrozenLMBlock
from encoders.lm.layer_loading import load_layers, random_layers
from encoders.lm.registry import get_family
from tests.conftest import save_tiny_opt, tiny_opt_config

OPT = get_family("opt")


@pytest.fixture
def block(tmp_path):
    _, ckpt = save_tiny_opt(tmp_path / "ckpt", post_ln=False)
    layers = load_layers(OPT, ckpt, [3]).layers
    torch.manual_seed(0)
    return FrozenLMBlock(layers, visual_dim=16, lm_dim=32)


def test_bidirectional_last_token_changes_first_output(block):
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(block(x)[:, 0], block(y)[:, 0], atol=1e-6)


def test_padding_is_masked_out(block):
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, -1] += 5.0
    pad = torch.tensor([[1, 1, 1, 1, 1, 0]])
    torch.testing.assert_close(block(x, pad)[:, :5], block(y, pad)[:, :5])


def test_no_positional_encoding_block_is_permutation_equivariant(block):
    x = torch.randn(2, 6, 16)
    perm = torch.randperm(6)
    torch.testing.assert_close(block(x)[:, perm], block(x[:, perm]), atol=1e-5, rtol=1e-5)


def test_frozen_not_in_optimizer_and_unchanged_by_training(block):
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), block)
    assert all(not p.requires_grad for p in block.layers.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    frozen_ids = {id(p) for p in block.layers.parameters()}
    assert frozen_ids.isdisjoint(id(p) for p in params)
    opt = torch.optim.AdamW(params, lr=1e-2)
    before = {k: v.clone() for k, v in block.layers.state_dict().items()}
    model.train()
    for _ in range(3):
        loss = model(torch.randn(4, 6, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert frozen_ids.isdisjoint(id(p) for p in opt.state)
    assert len(opt.state) == len(params)
    for k, v in block.layers.state_dict().items():
        torch.testing.assert_close(v, before[k])
    # gradients reach the layer below the block
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_block_stays_in_eval_mode_no_dropout(block):
    block.train()
    assert block.training and not block.layers.training
    assert all(not m.training for m in block.layers.modules())
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(block(x), block(x))  # dropout=0.5 in the tiny config


def test_adapters_are_bias_free_and_the_only_trainables(block):
    assert block.proj_in.bias is None and block.proj_out.bias is None
    assert block.proj_in.weight.shape == (32, 16) and block.proj_out.weight.shape == (16, 32)
    trainable = {id(p) for p in block.parameters() if p.requires_grad}
    assert trainable == {id(block.proj_in.weight), id(block.proj_out.weight)}


def test_random_control_same_shape_seeded_and_not_pretrained(tmp_path):
    _, ckpt = save_tiny_opt(tmp_path / "ckpt")
    pre = load_layers(OPT, ckpt, [2]).layers[0]
    cfg = tiny_opt_config()
    a = random_layers(OPT, cfg, [2], seed=1)[0]
    b = random_layers(OPT, cfg, [2], seed=1)[0]
    c = random_layers(OPT, cfg, [2], seed=2)[0]
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in pre.state_dict().items()
    }
    torch.testing.assert_close(a.fc1.weight, b.fc1.weight)
    assert not torch.allclose(a.fc1.weight, c.fc1.weight)
    assert not torch.allclose(a.fc1.weight, pre.fc1.weight)
    # the LM's own init (normal, std=init_std), not torch's default Linear init
    assert abs(a.fc1.weight.std().item() - cfg.init_std) < 0.01
    assert torch.all(a.fc1.bias == 0)


def test_each_control_records_where_its_weights_came_from():
    """The BlockInfo a trial reports (and its run records): the controls table's weights'
    source, and the identity of what was built. (Insertion and training with every control
    on every task: tests/test_tasks.py.)"""
    infos = {}
    for control in list_controls():
        layers = (5,) if get_control(control).layers != "none" else ()
        infos[control] = build_block(family="minilm", size="l6", layers=layers,
                                     control=control, seed=3, visual_dim=64)[1]
        assert infos[control].weights_source == get_control(control).weights_source
    pre = infos["pretrained"]
    assert pre.checkpoint == "sentence-transformers/all-MiniLM-L6-v2@package"
    assert (Path(pre.checkpoint_path) / "model.safetensors").is_file()
    assert len(pre.layers_sha256) == 64 and 0 < pre.bytes_read < 8_000_000  # one layer's
    assert infos["random"].checkpoint == ("random-init:BertModel._init_weights:"
                                          "sentence-transformers/all-MiniLM-L6-v2:seed=3")
    assert infos["adapters"].checkpoint == infos["none"].checkpoint == ""


def test_adapter_init_schemes_touch_only_the_two_linear_maps(block):
    frozen = {k: v.clone() for k, v in block.layers.state_dict().items()}
    default = block.proj_in.weight.clone()
    block.init_adapters("default")
    assert torch.equal(block.proj_in.weight, default)  # PyTorch's init is kept
    block.init_adapters("orthogonal")
    w = block.proj_in.weight  # (lm_dim, visual_dim): orthonormal columns
    eye = torch.eye(w.shape[1])
    assert torch.allclose(w.T @ w, eye, atol=1e-5)
    block.init_adapters("xavier")
    bound = (6 / sum(block.proj_out.weight.shape)) ** 0.5
    assert block.proj_out.weight.abs().max() <= bound
    assert not torch.allclose(block.proj_in.weight.T @ block.proj_in.weight, eye, atol=1e-2)
    assert all(torch.equal(v, frozen[k]) for k, v in block.layers.state_dict().items())
    valid = ", ".join(ADAPTER_INITS)
    with pytest.raises(ValueError, match=f"unknown adapter init 'he'; valid: {valid}"):
        block.init_adapters("he")
