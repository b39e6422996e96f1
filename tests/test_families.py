"""Every registered family, against its own transformers model, from a tiny checkpoint.

Parametrized over the registry: a new family is tested the moment it is registered.
Same layer, same input, bidirectional mask, identity positions -> same output as the
family's own layer module inside its own model; grouped-query attention where the family
has it; the block adds no positional encoding (permutation equivariance).
"""

from __future__ import annotations

import pytest
import torch

from encoders.lm.frozen_block import FrozenLMBlock, bidirectional_mask
from encoders.lm.layer_loading import load_layers
from encoders.lm.registry import get_family, list_families
from experiments.registry_checks import check_loaded_layer_is_the_models_own, tiny_checkpoint

FAMILIES = list_families()


@pytest.fixture(params=FAMILIES)
def family_checkpoint(request, tmp_path):
    return tiny_checkpoint(request.param, tmp_path)  # experiments/registry_checks.py


def test_layer_matches_own_model_layer(family_checkpoint):
    fam, _, own_layers, ckpt = family_checkpoint
    check_loaded_layer_is_the_models_own(fam, own_layers, ckpt)


def test_block_is_bidirectional_and_position_free(family_checkpoint):
    fam, _, _, ckpt = family_checkpoint
    loaded = load_layers(fam, ckpt, [0, 1])  # a span of two layers
    torch.manual_seed(0)
    block = FrozenLMBlock(loaded.layers, 8, 32, fam.layer_kwargs(loaded.config))
    x = torch.randn(2, 7, 8)
    y = x.clone()
    y[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(block(x)[:, 0], block(y)[:, 0], atol=1e-6)
        perm = torch.randperm(7)
        torch.testing.assert_close(block(x)[:, perm], block(x[:, perm]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_registry_sizes_plan_offline(family):
    fam = get_family(family)
    for name, size in fam.sizes.items():
        params = fam.layer_params(name)
        h, f = size.hidden_size, size.ffn_dim
        assert h * h < params < 4 * h * h + 3 * h * f + 10 * h + 4 * f, (family, name)


def test_final_norm_is_the_models_own_and_optional(family_checkpoint):
    fam, model, own_layers, ckpt = family_checkpoint
    if fam.final_norm_key is None:
        from encoders.weights.safetensors_reader import CheckpointFormatError

        with pytest.raises(CheckpointFormatError, match="no final norm"):
            load_layers(fam, ckpt, [2], final_norm=True)
        return
    loaded = load_layers(fam, ckpt, [2], final_norm=True)
    own_norm = [m for n, m in model.named_modules()
                if n and n.split(".")[-1] in ("final_layer_norm", "norm", "ln_f")
                and not isinstance(m, fam.layer_class) and "layers" not in n and ".h." not in n]
    assert len(own_norm) == 1
    torch.manual_seed(0)
    block = FrozenLMBlock(loaded.layers, 32, 32, fam.layer_kwargs(loaded.config),
                          loaded.final_norm)
    with torch.no_grad():
        block.proj_in.weight.copy_(torch.eye(32))
        block.proj_out.weight.copy_(torch.eye(32))
        x = torch.randn(2, 5, 32)
        mask = bidirectional_mask(None, 2, 5, x.dtype, x.device)
        extra = fam.layer_kwargs(loaded.config)(x)
        expected = own_norm[0](own_layers[2](x, attention_mask=mask, **extra))
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for p in loaded.final_norm.parameters())
