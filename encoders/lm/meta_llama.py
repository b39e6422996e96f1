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
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from encoders.lm.formats import LayerShapes, LayerTensors, header_shape
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


# params.json field -> required; vocab_size and others are not read.
PARAM_FIELDS = {"dim": True, "n_layers": True, "n_heads": True, "n_kv_heads": False,
                "multiple_of": False, "ffn_dim_multiplier": False, "norm_eps": False}


def check_params(params: object, where: str) -> dict:
    """params.json must be an object whose numbers are numbers: sizes positive integers, the
    multiplier and epsilon positive finite numbers, heads dividing evenly."""
    if not isinstance(params, dict):
        raise CheckpointFormatError(f"{where}: not Meta's params.json (not a JSON object); "
                                    "valid: a JSON object with dim, n_layers, n_heads")
    for key, required in PARAM_FIELDS.items():
        value = params.get(key)
        if value is None and not required:
            continue
        real = key in ("ffn_dim_multiplier", "norm_eps")
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value) and value > 0 and (real or isinstance(value, int)))
        if not ok:
            want = "a positive number" if real else "a positive integer"
            raise CheckpointFormatError(f"{where}: {key} = {value!r:.80}; valid: {want}")
    heads, kv = params["n_heads"], params.get("n_kv_heads") or params["n_heads"]
    if params["dim"] % heads or heads % kv:
        raise CheckpointFormatError(
            f"{where}: dim {params['dim']}, n_heads {heads}, n_kv_heads {kv} do not divide "
            "evenly")
    return params


def load_meta_config(checkpoint: CheckpointDir) -> LlamaConfig:
    where = checkpoint.resolve(PARAMS)
    try:
        params = json.loads(checkpoint.read_text(PARAMS))
    except (ValueError, RecursionError) as e:
        raise CheckpointFormatError(f"{where}: not Meta's params.json ({type(e).__name__}: "
                                    f"{str(e)[:200]})") from None
    return meta_config(check_params(params, where))


def shard_files(checkpoint: CheckpointDir) -> list[str]:
    files = []
    while checkpoint.has_file(name := f"consolidated.{len(files):02d}.pth"):
        files.append(checkpoint.resolve(name))
    if not files:
        raise CheckpointFormatError(f"{checkpoint.location}: {PARAMS} but no consolidated.00.pth")
    return files


def _wanted(indices: Sequence[int], final_norm: bool) -> dict[str, tuple[int | str, str, int | None]]:
    """Meta name -> (layer index or "norm", transformers name, concat dim or None)."""
    wanted = {f"layers.{i}.{m}": (i, hf, dim) for i in indices for m, (hf, dim) in LAYER_MAP.items()}
    if final_norm:
        wanted[FINAL_NORM] = ("norm", "weight", None)
    return wanted


def _names_in(reader: SafetensorsReader, location: str, n: int, wanted: dict) -> list[str]:
    """The wanted names the ``n``-th file holds (replicated ones: read from the first only),
    each listed in its header, else an error naming the file."""
    header = reader.read_header(location)
    names = [k for k, (_, _, dim) in wanted.items() if dim is not None or n == 0]
    missing = [k for k in names if k not in header.tensors]
    if missing:
        raise CheckpointFormatError(f"{location}: missing tensor(s) {missing[:5]}")
    return names


def meta_layer_shapes(
    checkpoint: CheckpointDir, indices: Sequence[int], reader: SafetensorsReader,
    final_norm: bool = False,
) -> dict[int | str, dict[str, tuple[int, ...]]]:
    """``read_meta_tensors``' shapes from each consolidated file's header: slices summed along
    their model-parallel dim, the other dims equal in every file; no tensor data read."""
    wanted = _wanted(indices, final_norm)
    parts: dict[str, list[tuple[int, ...]]] = {name: [] for name in wanted}
    for n, location in enumerate(shard_files(checkpoint)):
        header = reader.read_header(location)
        for name in _names_in(reader, location, n, wanted):
            parts[name].append(header_shape(header, name))
    out: dict[int | str, dict[str, tuple[int, ...]]] = {}
    for name, (key, hf_name, dim) in wanted.items():
        shape = parts[name][0]
        if dim is not None:
            if len({len(s) for s in parts[name]}) > 1 or len(shape) <= dim or any(
                    s[:dim] + s[dim + 1:] != shape[:dim] + shape[dim + 1:] for s in parts[name]):
                raise CheckpointFormatError(
                    f"{checkpoint.location}: {name}'s slices do not concatenate along dim {dim}: "
                    f"{parts[name]}")
            shape = (*shape[:dim], sum(s[dim] for s in parts[name]), *shape[dim + 1:])
        out.setdefault(key, {})[hf_name] = shape
    return out


def _join(parts: list[torch.Tensor], dim: int | None, name: str, files: list[str]) -> torch.Tensor:
    """One tensor from its model-parallel slices: 2-D weights (1-D norms) whose other
    dimension agrees across the files; anything else names the tensor and the files."""
    if dim is None:
        return parts[0]
    shapes = [tuple(p.shape) for p in parts]
    if any(len(s) != 2 or s[1 - dim] != shapes[0][1 - dim] for s in shapes):
        raise CheckpointFormatError(
            f"{files[0]}: tensor {name!r}: slices of shapes {shapes} across {len(files)} "
            f"file(s) do not join along dim {dim}")
    return torch.cat(parts, dim=dim)


def interleaved_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k rows from the interleaved rotary order (Meta's, llama.cpp's) to transformers'
    rotate-half order, per head."""
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
    wanted = _wanted(indices, final_norm)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    for n, location in enumerate(files):
        names = _names_in(reader, location, n, wanted)
        for name, tensor in reader.read_tensors(location, names).items():
            parts[name].append(tensor)
    out: dict[int | str, dict[str, torch.Tensor]] = {}
    for name, (key, hf_name, dim) in wanted.items():
        tensor = _join(parts[name], dim, name, files)
        heads = {"q_proj": config.num_attention_heads,
                 "k_proj": config.num_key_value_heads}.get(hf_name.split(".")[-2:][0])
        if heads is not None:
            head_dim = config.hidden_size // config.num_attention_heads
            if tuple(tensor.shape) != (heads * head_dim, config.hidden_size):
                raise CheckpointFormatError(
                    f"{files[0]}: tensor {name!r} has shape {tuple(tensor.shape)}, params.json "
                    f"expects {(heads * head_dim, config.hidden_size)}")
            tensor = interleaved_to_halves(tensor, heads)
        out.setdefault(key, {})[hf_name] = tensor
    return out


class MetaLlamaCheckpoint:
    """``WeightFormat`` of Meta's release, the paper's input (``encoders.lm.families.llama``
    lists it after the Hugging Face layout, so a folder holding both reads ``config.json``)."""

    marker = PARAMS

    def present(self, checkpoint: CheckpointDir) -> bool:
        return checkpoint.exists(self.marker)

    def config_location(self, checkpoint: CheckpointDir) -> str:
        return checkpoint.resolve(self.marker)

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

    def layer_shapes(
        self, family: LMFamily, checkpoint: CheckpointDir, config: LlamaConfig,
        indices: Sequence[int], reader: SafetensorsReader, *, final_norm: bool,
    ) -> LayerShapes:
        shapes = meta_layer_shapes(checkpoint, indices, reader, final_norm)
        return LayerShapes(layers={i: shapes[i] for i in indices}, final_norm=shapes.get("norm"))


META_LLAMA = MetaLlamaCheckpoint()
