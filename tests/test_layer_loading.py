"""Layer-only loading: same output as the layer inside the full model, only its shards read."""

from __future__ import annotations

import json

import pytest
import torch

from encoders.lm.frozen_block import FrozenLMBlock, bidirectional_mask
from encoders.lm.layer_loading import load_layers
from encoders.lm.lookup import locate
from encoders.lm.registry import get_family
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError
from tests.conftest import save_tiny_opt, weight_map

OPT = get_family("opt")


def capture_layer_io(model, layer_module, *args, **kwargs):
    seen = {}

    def hook(mod, a, kw, out):
        seen["input"] = kw.get("hidden_states", a[0] if a else None)
        seen["output"] = out

    handle = layer_module.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(*args, **kwargs)
    handle.remove()
    return seen["input"], seen["output"]


@pytest.mark.parametrize("index", [0, 2, 3])
def test_loaded_layer_matches_full_model_with_non_causal_mask(tiny_opt, index):
    model, ckpt = tiny_opt
    ids = torch.randint(0, 100, (2, 7))
    pos = torch.arange(7).expand(2, 7)
    bidir = torch.zeros(2, 1, 7, 7)
    x, expected = capture_layer_io(
        model, model.model.decoder.layers[index], ids, attention_mask=bidir, position_ids=pos
    )
    _, causal = capture_layer_io(model, model.model.decoder.layers[index], ids, position_ids=pos)
    assert not torch.allclose(expected, causal, atol=1e-5), "reference must really be non-causal"

    loaded = load_layers(OPT, ckpt, [index])
    layer = loaded.layers[0].eval()
    with torch.no_grad():
        got = layer(x, attention_mask=bidirectional_mask(None, 2, 7, x.dtype, x.device))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_only_shards_holding_the_layer_are_opened(tiny_opt):
    _, ckpt = tiny_opt
    wm = weight_map(ckpt.path)
    assert len(set(wm.values())) > 3, "fixture must really be sharded"
    reader = SafetensorsReader()
    loaded = load_layers(OPT, ckpt, [1], reader=reader)
    holding = {str(ckpt.path / f) for k, f in wm.items() if ".layers.1." in k}
    assert set(reader.files_opened) == holding
    layer_bytes = sum(p.numel() * 4 for p in loaded.layers[0].parameters())
    assert loaded.tensor_bytes == layer_bytes
    # headers + the layer's tensors, nothing of the other layers or the embeddings
    total = sum((ckpt.path / f).stat().st_size for f in set(wm.values()))
    assert layer_bytes <= reader.bytes_read < layer_bytes + 8 * 1024 * len(holding)
    assert reader.bytes_read < total / 3


def test_single_file_checkpoint_reads_only_the_layer(tmp_path):
    model, ckpt = save_tiny_opt(tmp_path / "single", shard=None)
    reader = SafetensorsReader()
    loaded = load_layers(OPT, ckpt, [2], reader=reader)
    size = (ckpt.path / "model.safetensors").stat().st_size
    assert reader.files_opened and set(reader.files_opened) == {str(ckpt.path / "model.safetensors")}
    assert reader.bytes_read < size / 3
    ref = model.model.decoder.layers[2].state_dict()
    for name, tensor in loaded.layers[0].state_dict().items():
        torch.testing.assert_close(tensor, ref[name])


def test_span_loads_consecutive_layers_in_order(tiny_opt):
    model, ckpt = tiny_opt
    loaded = load_layers(OPT, ckpt, [1, 2])
    for got, idx in zip(loaded.layers, [1, 2], strict=True):
        ref = model.model.decoder.layers[idx]
        torch.testing.assert_close(got.fc1.weight, ref.fc1.weight)


def test_missing_tensor_is_an_error_naming_the_file(tmp_path):
    _, ckpt = save_tiny_opt(tmp_path / "ckpt")
    index_path = ckpt.path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    # the index claims a tensor that its shard does not hold
    index["weight_map"]["model.decoder.layers.1.fc1.extra"] = index["weight_map"][
        "model.decoder.layers.1.fc1.weight"
    ]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointFormatError, match="missing tensor"):
        load_layers(OPT, ckpt, [1])


def test_strict_loading_rejects_unexpected_and_missing(tmp_path):
    from safetensors.torch import load_file, save_file

    _, ckpt = save_tiny_opt(tmp_path / "ckpt", shard=None)
    path = ckpt.path / "model.safetensors"
    state = load_file(str(path))
    del state["model.decoder.layers.2.fc2.bias"]
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointFormatError, match=r"missing \['fc2.bias'\]"):
        load_layers(OPT, ckpt, [2])
    load_layers(OPT, ckpt, [1])  # other layers are unaffected


def test_truncated_shard_is_an_error_naming_the_file(tmp_path):
    _, ckpt = save_tiny_opt(tmp_path / "ckpt")
    shard = ckpt.path / weight_map(ckpt.path)["model.decoder.layers.3.fc1.weight"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointFormatError, match=f"{shard.name}.*truncated"):
        load_layers(OPT, ckpt, [3])


def test_index_pointing_at_missing_file(tmp_path):
    _, ckpt = save_tiny_opt(tmp_path / "ckpt")
    shard = ckpt.path / weight_map(ckpt.path)["model.decoder.layers.0.fc1.weight"]
    shard.unlink()
    with pytest.raises(CheckpointFormatError, match=f"{shard.name}.*missing"):
        load_layers(OPT, ckpt, [0])


def test_minilm_block_loads_from_the_package_and_matches_bert():
    from transformers import BertModel

    fam = get_family("minilm")
    ckpt = locate(fam, fam.size("l6"))
    assert ckpt.source == "package" and (ckpt.path / "model.safetensors").is_file()
    loaded = load_layers(fam, ckpt, [5])
    assert loaded.config.hidden_size == 384 and loaded.config.num_hidden_layers == 6
    bert = BertModel.from_pretrained(str(ckpt.path)).eval()
    ids = torch.randint(1000, 2000, (2, 9))
    x, expected = capture_layer_io(bert, bert.encoder.layer[5], ids)
    with torch.no_grad():
        got = loaded.layers[0].eval()(x, attention_mask=bidirectional_mask(None, 2, 9, x.dtype, x.device))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert loaded.bytes_read < 0.1 * (ckpt.path / "model.safetensors").stat().st_size
    block = FrozenLMBlock(loaded.layers, 64, 384)
    assert block(torch.randn(2, 5, 64)).shape == (2, 5, 64)
