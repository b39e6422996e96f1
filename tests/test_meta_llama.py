"""Meta's original LLaMA format (params.json + consolidated.NN.pth), generated here."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from encoders.lm.frozen_block import bidirectional_mask
from encoders.lm.gguf_format import GGUF_LLAMA
from encoders.lm.hf_format import HF_CHECKPOINT
from encoders.lm.layer_loading import load_config, load_layers
from encoders.lm.meta_llama import LAYER_MAP, META_LLAMA
from encoders.lm.registry import get_family
from encoders.weights.checkpoint_dir import CheckpointDir
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError

LLAMA = get_family("llama")
PARAMS = {"dim": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32,
          "ffn_dim_multiplier": 0.75, "norm_eps": 1e-5, "vocab_size": -1}


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of transformers' conversion permute: back to Meta's interleaved rotary rows."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def save_meta_checkpoint(path, model: LlamaModel, n_shards: int) -> None:
    cfg = model.config
    hf_to_meta = {hf: (meta, dim) for meta, (hf, dim) in LAYER_MAP.items()}
    shards = [{} for _ in range(n_shards)]
    for name, tensor in model.state_dict().items():
        if not name.startswith("layers."):
            meta, dim = {"norm.weight": ("norm.weight", None),
                         "embed_tokens.weight": ("tok_embeddings.weight", 1)}[name]
        else:
            _, i, local = name.split(".", 2)
            m, dim = hf_to_meta[local]
            meta = f"layers.{i}.{m}"
            if local.endswith("q_proj.weight"):
                tensor = _unpermute(tensor, cfg.num_attention_heads)
            elif local.endswith("k_proj.weight"):
                tensor = _unpermute(tensor, cfg.num_key_value_heads)
        pieces = [tensor] * n_shards if dim is None else list(tensor.chunk(n_shards, dim=dim))
        for shard, piece in zip(shards, pieces, strict=True):
            shard[meta] = piece.clone()
    path.mkdir(parents=True)
    for k, shard in enumerate(shards):
        torch.save(shard, path / f"consolidated.{k:02d}.pth")
    (path / "params.json").write_text(json.dumps(PARAMS))


@pytest.fixture(params=[1, 2], ids=["one-file", "two-model-parallel-files"])
def meta_checkpoint(request, tmp_path):
    from encoders.lm.meta_llama import meta_config

    config = meta_config(PARAMS)
    config.vocab_size = 64
    torch.manual_seed(0)
    model = LlamaModel(config).eval()
    save_meta_checkpoint(tmp_path / "7B", model, request.param)
    return model, CheckpointDir(tmp_path / "7B", "weights-dir", "meta/llama")


def test_config_from_params_json(meta_checkpoint):
    _, ckpt = meta_checkpoint
    config = load_config(LLAMA, ckpt)
    assert isinstance(config, LlamaConfig)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_attention_heads, config.num_key_value_heads) == (32, 64, 3, 4, 2)


def test_meta_layer_equals_transformers_layer_and_reads_only_it(meta_checkpoint):
    model, ckpt = meta_checkpoint
    reader = SafetensorsReader(ckpt.open)
    loaded = load_layers(LLAMA, ckpt, [1], reader=reader, final_norm=True)
    ref = model.layers[1].state_dict()
    got = loaded.layers[0].state_dict()
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    torch.testing.assert_close(loaded.final_norm.weight, model.norm.weight)
    x = torch.randn(2, 5, 32)
    mask = bidirectional_mask(None, 2, 5, x.dtype, x.device)
    extra = LLAMA.layer_kwargs(loaded.config)(x)
    with torch.no_grad():
        torch.testing.assert_close(loaded.layers[0](x, attention_mask=mask, **extra),
                                   model.layers[1](x, attention_mask=mask, **extra))
    files = sorted(ckpt.path.glob("consolidated.*.pth"))
    total = sum(p.stat().st_size for p in files)
    stored = sum(t.numel() * t.element_size() for p in files
                 for t in torch.load(p, weights_only=True).values())
    layer_bytes = sum(t.numel() * 4 for t in ref.values())
    assert loaded.tensor_bytes == layer_bytes + 32 * 4  # the layer and the final norm
    # the layer's bytes (+2%) and each file's zip directory and pickle: nothing of the others
    assert reader.bytes_read <= 1.02 * loaded.tensor_bytes + (total - stored)
    assert reader.bytes_read < 0.5 * total


def test_the_family_declares_its_formats_and_the_first_present_one_reads(meta_checkpoint,
                                                                          tmp_path):
    """LLaMA lists the Hugging Face layout, then Meta's: the loader asks the family, not the
    family's name. A folder with both reads config.json; one with neither names both."""
    model, ckpt = meta_checkpoint
    assert LLAMA.format_for(ckpt) is META_LLAMA
    assert LLAMA.weight_formats == (HF_CHECKPOINT, META_LLAMA, GGUF_LLAMA)
    LlamaModel(model.config).save_pretrained(ckpt.path)  # a Hugging Face copy beside it
    both = CheckpointDir(ckpt.path, "weights-dir", "meta/llama")
    assert LLAMA.format_for(both) is HF_CHECKPOINT
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFormatError,
                       match=r"missing config.json or params.json or a \*.gguf file"):
        load_layers(LLAMA, CheckpointDir(tmp_path / "empty", "weights-dir", "x"), [0])
    assert all(f.marker == "config.json" for f in get_family("opt").weight_formats)
