"""Crafted checkpoint files: safetensors with a hand-written header, and torch.save zips with
a hand-written data.pkl (storage records, offsets and sizes chosen by the test), so the
readers can be fed exactly the malformations issue 14 lists and the fuzz test generates."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch


def write_safetensors(path: Path, header: object, data: bytes, *, raw: bytes | None = None) -> Path:
    """A file with this JSON header (or ``raw`` header bytes) and data section."""
    body = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def split_safetensors(path: Path) -> tuple[dict, bytes]:
    """(header object, data section) of a file safetensors wrote."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


@dataclass
class Storage:
    """A storage record: ``cls`` is a torch legacy storage class (torch.FloatStorage)."""

    cls: type
    key: str
    numel: int


@dataclass
class TensorRecord:
    storage: Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def pickle_records(state: object) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    return buf.getvalue()


def write_torch_zip(path: Path, pkl: bytes, storages: dict[str, bytes]) -> Path:
    """A torch.save-style zip: ``archive/data.pkl`` and one stored entry per storage key."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    return path


def rezip(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """A copy of a torch.save zip with some entries' bytes replaced (stored, uncompressed)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            name = info.filename
            z.writestr(name, next((v for k, v in replace.items() if name.endswith(k)),
                                  src.read(name)))
    return target


def data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


# ---- GGUF files, written with gguf-py's own writer ------------------------------------------

# transformers' name inside a layer -> llama.cpp's (convert_hf_to_gguf.py's tensor map)
GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def llama_cpp_permute(w, n_head: int):
    """llama.cpp's converter (``LlamaModel.permute``): q/k rows to interleaved rotary order."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(path: Path, model, arch: str, qtype: str = "F32", *, permute: bool = True) -> Path:
    """A transformers decoder model (LLaMA-like: llama, mistral, qwen2) as llama.cpp writes it:
    metadata from its config, layers renamed, q/k rows permuted (``permute``), 2-D weights
    quantised to ``qtype`` (norms and biases stay F32, as llama.cpp keeps them)."""
    import gguf
    import numpy as np

    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    kind = gguf.GGMLQuantizationType[qtype]

    def add(name: str, tensor) -> None:
        array = tensor.detach().float().numpy()
        if array.ndim == 2 and kind != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))

    add("token_embd.weight", model.embed_tokens.weight)
    for i, layer in enumerate(model.layers):
        for hf_name, tensor in layer.state_dict().items():
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            w = tensor
            heads = {"self_attn.q_proj.weight": config.num_attention_heads,
                     "self_attn.k_proj.weight": config.num_key_value_heads}.get(hf_name)
            if heads and permute:
                w = llama_cpp_permute(w, heads)
            add(f"blk.{i}.{GGUF_NAMES[hf_name]}", w)
    add("output_norm.weight", model.norm.weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
