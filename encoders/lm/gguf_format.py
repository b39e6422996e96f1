"""GGUF checkpoints (llama.cpp's format; what Ollama keeps as its model blobs) as a weight format.

A GGUF checkpoint is one file: a folder holding exactly one ``*.gguf``, or the file itself
(``--weights-dir`` may name an Ollama blob, ``~/.ollama/models/blobs/sha256-...``, which has
no extension: it is known by its magic). Its config is its metadata (``llama.block_count``,
``llama.embedding_length``, ...), checked against the registry's size as ``config.json`` is.
Only the requested layers' tensors are range-read (``encoders/weights/gguf_reader.py``),
dequantised with gguf-py (every type it implements: F32, F16, BF16, Q8_0, Q4_0/1, Q5_0/1,
the K-quants, ...) to float32, renamed from llama.cpp's names to transformers', and, for the
``llama`` architecture, the q/k rows put back in transformers' order: llama.cpp's converter
permutes them for its interleaved rotary kernel (``convert_hf_to_gguf.py``'s
``LlamaModel.permute``); ``qwen2`` is stored unpermuted (NEOX rotary).

A quantised block is a quantised copy of the LM's weights, not the float weights: the run
records each layer tensor's GGML type (``checkpoint.quantization``) and the file's sha256 as
the checkpoint's identity.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import fsspec
import torch

from encoders.lm.formats import LayerShapes, LayerTensors
from encoders.lm.meta_llama import interleaved_to_halves
from encoders.weights.checkpoint_dir import CheckpointDir, is_url
from encoders.weights.gguf_reader import MAGIC, GGUFTable
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from encoders.lm.registry import LMFamily
    from encoders.weights.layer_cache import LayerCache

SUFFIX = ".gguf"
# llama.cpp's name inside a layer (after ``blk.N.``) -> transformers' name in the layer
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
FINAL_NORM = "output_norm.weight"
MAX_TAG = 5000  # characters of the quantization tag (MLflow's tag values hold 8000)


def gguf_file(checkpoint: CheckpointDir) -> str | None:
    """The checkpoint's GGUF file: its location itself when that is a GGUF file, else the one
    ``*.gguf`` in the folder (inside it: ``CheckpointDir.resolve``); None when it has none."""
    location = str(checkpoint.location)
    fs, path = fsspec.core.url_to_fs(location)
    try:
        info = fs.info(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if info.get("type") == "file":
        with checkpoint.open(location) as f:
            return location if f.read(4) == MAGIC else None
    names = sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)
                    if p.rstrip("/").endswith(SUFFIX)})
    if len(names) > 1:
        raise CheckpointFormatError(
            f"{location}: {len(names)} GGUF files ({', '.join(names[:5])}); valid: one a "
            "checkpoint folder, or --weights-dir naming the file itself")
    return checkpoint.resolve(names[0]) if names else None


def _file(checkpoint: CheckpointDir) -> str:
    found = gguf_file(checkpoint)
    if found is None:
        raise CheckpointFormatError(f"{checkpoint.location}: no GGUF file")
    return found


def _header(reader: SafetensorsReader, location: str) -> GGUFTable:
    header = reader.read_header(location)
    if not isinstance(header, GGUFTable):
        raise CheckpointFormatError(f"{location}: not a GGUF file (magic)")
    return header


def _count(values: dict, key: str, where: str, default: int | None = None) -> int:
    value = values.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointFormatError(f"{where}: {key} = {value!r:.80}; valid: a positive integer")
    return value


def _real(values: dict, key: str, where: str, default: float) -> float:
    value = values.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e12:
        raise CheckpointFormatError(f"{where}: {key} = {value!r:.80}; valid: a positive number")
    return float(f"{value:.8g}")  # GGUF stores float32: 1e-5 reads back as 9.9999997e-06


@cache
def _local_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(checkpoint: CheckpointDir, location: str) -> str:
    """``sha256:<hex>`` of the file: hashed once per process for a local file; for a remote
    one, the digest its name carries (an Ollama blob is named ``sha256-<hex>``), else its
    location and version stamp (hashing it would read the whole file)."""
    if not is_url(location):
        st = os.stat(location)
        return f"sha256:{_local_sha256(os.path.realpath(location), st.st_size, st.st_mtime_ns)}"
    named = re.search(r"sha256[-:]([0-9a-f]{64})$", location)
    if named:
        return f"sha256:{named.group(1)}"
    return f"{location} (not hashed remotely; version {checkpoint.stamp(location)})"


@dataclass(frozen=True)
class GGUFCheckpoint:
    """``WeightFormat`` of GGUF files of ``architectures`` (``general.architecture``);
    ``permuted_qk``: their q/k rows are in llama.cpp's interleaved-rotary order."""

    architectures: tuple[str, ...]
    permuted_qk: bool
    marker: str = "a *.gguf file"

    def present(self, checkpoint: CheckpointDir) -> bool:
        return gguf_file(checkpoint) is not None

    def config_location(self, checkpoint: CheckpointDir) -> str:
        return _file(checkpoint)

    def load_config(self, family: LMFamily, checkpoint: CheckpointDir) -> PretrainedConfig:
        location = _file(checkpoint)
        values = _header(SafetensorsReader(checkpoint.open), location).values
        arch = values.get("general.architecture")
        if arch not in self.architectures:
            raise CheckpointFormatError(
                f"{location}: general.architecture {arch!r} is not family {family.name!r}'s; "
                f"valid: {', '.join(self.architectures)}")
        heads = _count(values, f"{arch}.attention.head_count", location)
        fields = {
            "hidden_size": _count(values, f"{arch}.embedding_length", location),
            "num_hidden_layers": _count(values, f"{arch}.block_count", location),
            "num_attention_heads": heads,
            "num_key_value_heads": _count(values, f"{arch}.attention.head_count_kv", location,
                                          heads),
            "intermediate_size": _count(values, f"{arch}.feed_forward_length", location),
            "rms_norm_eps": _real(values, f"{arch}.attention.layer_norm_rms_epsilon",
                                  location, 1e-6),
            "max_position_embeddings": _count(values, f"{arch}.context_length", location, 2048),
        }
        if f"{arch}.attention.key_length" in values:
            fields["head_dim"] = _count(values, f"{arch}.attention.key_length", location)
        try:
            config = family.config_class(**fields)
        except Exception as e:  # noqa: BLE001  (transformers' strict fields raise their own types)
            raise CheckpointFormatError(
                f"{location}: not a valid {family.name} config ({type(e).__name__}: "
                f"{str(e)[:200]})") from None
        config._attn_implementation = "sdpa"
        return config

    def _names(self, header: GGUFTable, indices: Sequence[int], final_norm: bool
               ) -> dict[str, tuple[int | str, str]]:
        """GGUF name -> (layer index or "norm", transformers name): every tensor of each
        requested layer, mapped; a tensor llama.cpp names that no map has is an error."""
        names: dict[str, tuple[int | str, str]] = {}
        for i in indices:
            prefix = f"blk.{i}."
            inside = [n[len(prefix):] for n in header.tensors if n.startswith(prefix)]
            unknown = sorted(n for n in inside if n not in LAYER_NAMES)
            if unknown:
                raise CheckpointFormatError(
                    f"{header.path}: layer {i}: tensor(s) {unknown[:5]} have no transformers "
                    f"name; valid: {', '.join(LAYER_NAMES)}")
            if not inside:
                raise CheckpointFormatError(f"{header.path}: no tensors of layer {i} (blk.{i}.*)")
            names.update({prefix + n: (i, LAYER_NAMES[n]) for n in inside})
        if final_norm:
            if FINAL_NORM not in header.tensors:
                raise CheckpointFormatError(f"{header.path}: missing tensor(s) ['{FINAL_NORM}']")
            names[FINAL_NORM] = ("norm", "weight")
        return names

    def read_layers(
        self, family: LMFamily, checkpoint: CheckpointDir, config: PretrainedConfig,
        indices: Sequence[int], reader: SafetensorsReader, *, final_norm: bool,
        cache: LayerCache | None,
    ) -> LayerTensors:
        """Range-read, dequantised to float32, renamed, q/k rows unpermuted. Remote files are
        read by range directly (the layer cache keeps Hugging Face shards' layers)."""
        location = _file(checkpoint)
        header = _header(reader, location)
        names = self._names(header, indices, final_norm)
        raw = reader.read_tensors(location, names)
        layers: dict[int, dict[str, tuple[str, torch.Tensor]]] = {i: {} for i in indices}
        norm: dict[str, torch.Tensor] | None = {} if final_norm else None
        types: dict[int, list[str]] = {i: [] for i in indices}
        for name, (key, hf_name) in names.items():
            qtype, shape = header.ggml[name]
            tensor = dequantize(raw[name], qtype, shape, f"{location}: tensor {name!r}")
            heads = {"self_attn.q_proj.weight": config.num_attention_heads,
                     "self_attn.k_proj.weight": config.num_key_value_heads}.get(hf_name)
            if heads is not None and self.permuted_qk:
                if tensor.shape[0] % (2 * heads):
                    raise CheckpointFormatError(
                        f"{location}: tensor {name!r} of shape {tuple(tensor.shape)} does not "
                        f"split into {heads} rotary heads")
                tensor = interleaved_to_halves(tensor, heads)
            if key == "norm":
                norm[hf_name] = tensor
            else:
                layers[key][name] = (hf_name, tensor)
                types[key].append(f"{name.split('.', 2)[2].removesuffix('.weight')}={qtype}")
        tag = "; ".join(f"blk.{i}: {' '.join(sorted(t))}" for i, t in types.items())
        return LayerTensors(layers=layers, final_norm=norm,
                            identity=file_identity(checkpoint, location),
                            quantization=tag if len(tag) <= MAX_TAG else tag[:MAX_TAG - 1] + "…")

    def layer_shapes(
        self, family: LMFamily, checkpoint: CheckpointDir, config: PretrainedConfig,
        indices: Sequence[int], reader: SafetensorsReader, *, final_norm: bool,
    ) -> LayerShapes:
        header = _header(reader, _file(checkpoint))
        names = self._names(header, indices, final_norm)
        layers: dict[int, dict[str, tuple[int, ...]]] = {i: {} for i in indices}
        norm: dict[str, tuple[int, ...]] | None = {} if final_norm else None
        for name, (key, hf_name) in names.items():
            shape = header.ggml[name][1]
            if key == "norm":
                norm[hf_name] = shape
            else:
                layers[key][hf_name] = shape
        return LayerShapes(layers=layers, final_norm=norm)


def dequantize(raw: torch.Tensor, qtype: str, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """A GGML tensor's bytes -> float32 of ``shape`` (gguf-py's dequantisation)."""
    import numpy as np
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    kind = GGMLQuantizationType[qtype]
    block, block_bytes = GGML_QUANT_SIZES[kind]
    row = shape[-1] // block * block_bytes
    data = raw.numpy().reshape(-1, row)
    try:
        values = gguf_dequantize(data, kind)
    except NotImplementedError:
        raise CheckpointFormatError(
            f"{where}: GGML type {qtype} cannot be dequantised by the gguf package") from None
    return torch.from_numpy(np.array(values, dtype=np.float32)).reshape(shape)


GGUF_LLAMA = GGUFCheckpoint(architectures=("llama",), permuted_qk=True)
# llama.cpp converts Mistral 7B to the llama architecture; newer converters may say mistral
GGUF_MISTRAL = GGUFCheckpoint(architectures=("llama", "mistral"), permuted_qk=True)
GGUF_QWEN2 = GGUFCheckpoint(architectures=("qwen2",), permuted_qk=False)
