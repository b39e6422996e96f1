"""Every registered family, against its own transformers model, from a tiny checkpoint.

Parametrized over the registry: a new family is tested the moment it is registered.
Same layer, same input, bidirectional mask, identity positions -> same output as the
family's own layer module inside its own model; grouped-query attention where the family
has it; the block adds no positional encoding (permutation equivariance).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from encoders.lm.frozen_block import FrozenLMBlock, bidirectional_mask
from encoders.lm.layer_loading import load_layers
from encoders.lm.registry import get_family, list_families
from encoders.weights.checkpoint_dir import CheckpointDir
from encoders.weights.safetensors_reader import SafetensorsReader

FAMILIES = list_families()


def tiny_size(family: str):
    fam = get_family(family)
    real = fam.size(fam.default_size)
    extra = dict(real.extra)
    if "num_key_value_heads" in extra:
        extra["num_key_value_heads"] = 2  # 4 query heads share 2 kv heads: GQA
    if "word_embed_proj_dim" in extra:
        extra["word_embed_proj_dim"] = 32
    return dataclasses.replace(
        real, name="tiny", repo_id=f"tiny/{family}", hidden_size=32, num_layers=3,
        num_heads=4, ffn_dim=64, extra=extra,
    )


@pytest.fixture(params=FAMILIES)
def family_checkpoint(request, tmp_path):
    fam = get_family(request.param)
    config = fam.make_config(tiny_size(request.param))
    config.vocab_size = 64
    torch.manual_seed(0)
    model = fam.model_class(config).eval()
    model.save_pretrained(tmp_path, max_shard_size="30KB")
    layers = [m for m in model.modules() if isinstance(m, fam.layer_class)]
    assert len(layers) == 3
    return fam, model, layers, CheckpointDir(tmp_path, "weights-dir", f"tiny/{fam.name}")


def test_layer_matches_own_model_layer(family_checkpoint):
    fam, _, own_layers, ckpt = family_checkpoint
    reader = SafetensorsReader()
    loaded = load_layers(fam, ckpt, [1], reader=reader)
    layer = loaded.layers[0].eval()
    assert type(layer) is fam.layer_class
    x = torch.randn(2, 6, 32)
    mask = bidirectional_mask(None, 2, 6, x.dtype, x.device)
    extra = fam.layer_kwargs(loaded.config)(x)
    with torch.no_grad():
        expected = own_layers[1](x, attention_mask=mask, **extra)
        got = layer(x, attention_mask=mask, **extra)
        other = own_layers[2](x, attention_mask=mask, **extra)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, other, atol=1e-4), "must be layer 1, not another layer"
    # only layer 1's tensors were read (plus headers)
    assert loaded.tensor_bytes == sum(p.numel() * 4 for p in layer.parameters())
    if hasattr(loaded.config, "num_key_value_heads") and fam.rotary:
        assert loaded.config.num_key_value_heads == 2


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
