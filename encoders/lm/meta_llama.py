"""Meta's original LLaMA format: ``params.json`` + ``consolidated.NN.pth`` (the paper's input).

Each ``consolidated.NN.pth`` is a torch.save zip holding one model-parallel slice: column-
parallel weights (wq, wk, wv, w1, w3) are split along dim 0, row-parallel ones (wo, w2)
along dim 1, norms are replicated. Only the requested layers' slices are range-read
(weights-only, see ``encoders/weights/torch_zip.py``), concatenated, renamed to transformers' LlamaDecoderLayer
names, and q/k rows permuted exactly as transformers' own conversion script does
(Meta interleaves rotary pairs; transformers rotates halves).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from encoders.lm.formats import LayerTensors
from encoders.weights.checkpoint_dir import CheckpointDir
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError

if TYPE_CHECKING:  # transformers' config classes import torchvision and dynamo: ~1.4 s
    from transformers import LlamaConfig

    from encoders.lm.registry import LMFamily
    from encoders.weights.layer_cache import LayerCache

PARAMS = "params.json"
# Meta name inside a layer -> (transformers name, concat dim or None if replicated)
LAYER_MAP = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
FINAL_NORM = "norm.weight"


def meta_config(params: dict) -> LlamaConfig:
    """transformers' conversion: FFN width from dim, multiple_of and ffn_dim_multiplier."""
    dim = params["dim"]
    hidden = int(2 * (4 * dim) / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    multiple = params.get("multiple_of", 256)
    hidden = multiple * ((hidden + multiple - 1) // multiple)
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=params["n_layers"],
        num_attention_heads=params["n_heads"],
        num_key_value_heads=params.get("n_kv_heads") or params["n_heads"],
        rms_norm_eps=params.get("norm_eps", 1e-5),
    )
    config._attn_implementation = "sdpa"
    return config


def load_meta_config(checkpoint: CheckpointDir) -> LlamaConfig:
    return meta_config(json.loads(checkpoint.read_text(PARAMS)))


def shard_files(checkpoint: CheckpointDir) -> list[str]:
    files = []
    while checkpoint.has_file(name := f"consolidated.{len(files):02d}.pth"):
        files.append(checkpoint.resolve(name))
    if not files:
        raise CheckpointFormatError(f"{checkpoint.location}: {PARAMS} but no consolidated.00.pth")
    return files


def _permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape  # (heads * head_dim, dim)
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_meta_tensors(
    checkpoint: CheckpointDir,
    config: LlamaConfig,
    indices: Sequence[int],
    reader: SafetensorsReader,
    final_norm: bool = False,
) -> dict[int | str, dict[str, torch.Tensor]]:
    """{layer index: {transformers name: tensor}}, plus {"norm": {...}} if ``final_norm``."""
    files = shard_files(checkpoint)
    wanted = {f"layers.{i}.{m}": (i, hf, dim) for i in indices for m, (hf, dim) in LAYER_MAP.items()}
    if final_norm:
        wanted[FINAL_NORM] = ("norm", "weight", None)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    for n, location in enumerate(files):
        header = reader.read_header(location)
        names = [k for k, (_, _, dim) in wanted.items() if dim is not None or n == 0]
        missing = [k for k in names if k not in header.tensors]
        if missing:
            raise CheckpointFormatError(f"{location}: missing tensor(s) {missing[:5]}")
        for name, tensor in reader.read_tensors(location, names).items():
            parts[name].append(tensor)
    out: dict[int | str, dict[str, torch.Tensor]] = {}
    for name, (key, hf_name, dim) in wanted.items():
        tensor = parts[name][0] if dim is None else torch.cat(parts[name], dim=dim)
        if hf_name.endswith("q_proj.weight"):
            tensor = _permute(tensor, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = _permute(tensor, config.num_key_value_heads)
        out.setdefault(key, {})[hf_name] = tensor
    return out


class MetaLlamaCheckpoint:
    """``WeightFormat`` of Meta's release, the paper's input (``encoders.lm.families.llama``
    lists it after the Hugging Face layout, so a folder holding both reads ``config.json``)."""

    marker = PARAMS

    def load_config(self, family: LMFamily, checkpoint: CheckpointDir) -> LlamaConfig:
        return load_meta_config(checkpoint)

    def read_layers(
        self, family: LMFamily, checkpoint: CheckpointDir, config: LlamaConfig,
        indices: Sequence[int], reader: SafetensorsReader, *, final_norm: bool,
        cache: LayerCache | None,
    ) -> LayerTensors:
        """Local copies only: the layer cache serves remote Hugging Face shards."""
        states = read_meta_tensors(checkpoint, config, indices, reader, final_norm)
        return LayerTensors(
            layers={i: {f"layers.{i}.{name}": (name, t) for name, t in states[i].items()}
                    for i in indices},
            final_norm=states.get("norm"),
        )


META_LLAMA = MetaLlamaCheckpoint()
