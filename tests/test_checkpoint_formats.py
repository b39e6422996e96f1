"""Strict format validation in the three readers (issue 14, item 2): every malformation is one
CheckpointFormatError naming the file (and the tensor), never bytes from the wrong place
loaded as weights, never another exception type."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from encoders.lm.layer_loading import load_config, load_layers
from encoders.lm.registry import get_family
from encoders.weights.checkpoint_dir import CheckpointDir
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError
from tests.crafted import (
    Storage,
    TensorRecord,
    pickle_records,
    split_safetensors,
    write_safetensors,
    write_torch_zip,
)


def _refused(path, match: str = "", tensor: str | None = None) -> str:
    """Reading every tensor of ``path`` raises one CheckpointFormatError naming the file."""
    reader = SafetensorsReader()
    with pytest.raises(CheckpointFormatError) as err:
        reader.read_tensors(path, list(reader.read_header(path).tensors))
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    assert match in message, message
    if tensor is not None:
        assert repr(tensor) in message, message
    return message


@pytest.fixture
def valid(tmp_path):
    """A real two-tensor file: its header and data, to be edited."""
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.arange(4, dtype=torch.float32), "b": torch.ones(2, 2)}, str(path))
    header, data = split_safetensors(path)
    return tmp_path / "x.safetensors", header, data


def test_the_crafting_helper_writes_files_safetensors_and_the_reader_accept(valid):
    path, header, data = valid
    write_safetensors(path, header, data)
    got = SafetensorsReader().read_tensors(path, ["a", "b"])
    torch.testing.assert_close(got["a"], torch.arange(4, dtype=torch.float32))


@pytest.mark.parametrize("name, edit, match", [
    ("negative start", lambda h: h["a"].update(data_offsets=[-8, 8]), "data_offsets"),
    ("reversed", lambda h: h["a"].update(data_offsets=[16, 0]), "data_offsets"),
    ("missing offsets", lambda h: h["a"].pop("data_offsets"), "data_offsets"),
    ("one offset", lambda h: h["a"].update(data_offsets=[0]), "data_offsets"),
    ("float offsets", lambda h: h["a"].update(data_offsets=[0.0, 16.0]), "data_offsets"),
    ("bool offset", lambda h: h["a"].update(data_offsets=[False, 16]), "data_offsets"),
    ("string offsets", lambda h: h["a"].update(data_offsets="0-16"), "data_offsets"),
    ("bytes != shape x dtype", lambda h: h["a"].update(shape=[3]), "bytes for shape"),
    ("dtype changes the size", lambda h: h["a"].update(dtype="F64"), "bytes for shape"),
    ("unknown dtype", lambda h: h["a"].update(dtype="F128"), "unknown dtype"),
    ("dtype not a string", lambda h: h["a"].update(dtype=4), "unknown dtype"),
    ("negative dim", lambda h: h["a"].update(shape=[-4]), "shape"),
    ("shape not a list", lambda h: h["a"].update(shape="4"), "shape"),
    ("entry not an object", lambda h: h.update(a=[0, 16]), "not an object"),
    ("overlap", lambda h: h["b"].update(data_offsets=[0, 16]), "overlap"),
])
def test_malformed_safetensors_entries(valid, name, edit, match):
    path, header, data = valid
    edit(header)
    write_safetensors(path, header, data)
    _refused(path, match, tensor="a" if name != "overlap" else None)


def test_a_negative_start_no_longer_loads_header_bytes_as_weights(valid):
    path, header, data = valid
    header["a"]["data_offsets"] = [-16, 0]  # 16 bytes before the data: the header's tail
    write_safetensors(path, header, data)
    with pytest.raises(CheckpointFormatError, match="'a': data_offsets"):
        SafetensorsReader().read_tensors(path, ["a"])


@pytest.mark.parametrize("name, raw, match", [
    ("a list", b"[1, 2]", "not a JSON object"),
    ("a number", b"42", "not a JSON object"),
    ("bad JSON", b"{\"a\": ", "corrupt safetensors header"),
    ("bad UTF-8", b"{\"\xff\xfe\": 1}", "corrupt safetensors header"),
    ("deep nesting", b"{\"a\": " + b"[" * 200_000 + b"]" * 200_000 + b"}", "corrupt"),
    ("metadata not strings", b"{\"__metadata__\": {\"k\": 1}}", "__metadata__"),
])
def test_malformed_safetensors_headers(tmp_path, name, raw, match):
    path = write_safetensors(tmp_path / "x.safetensors", None, b"", raw=raw)
    _refused(path, match)


def test_gaps_trailing_bytes_and_a_length_past_the_end_are_refused(valid):
    path, header, data = valid
    header["b"]["data_offsets"] = [20, 36]  # a 4-byte hole after "a"
    write_safetensors(path, header, data + b"\0" * 4)
    _refused(path, "leave a gap", tensor="b")
    path2 = path.with_name("y.safetensors")
    write_safetensors(path2, split_safetensors(path.with_name("ok.safetensors"))[0], data + b"x")
    _refused(path2, "trailing bytes")
    blob = path2.read_bytes()
    path2.write_bytes(b"\xff\x00\x00\x00\x00\x00\x00\x00" + blob[8:])
    _refused(path2, "not a safetensors file")


# ---- torch.save zips (.bin / .pth) --------------------------------------------------------

FLOATS = torch.arange(4, dtype=torch.float32)


def _bin(tmp_path, records: dict, storages: dict | None = None, name: str = "x.bin"):
    storages = storages if storages is not None else {"0": FLOATS.numpy().tobytes(),
                                                      "1": b"\x07" * 64}
    return write_torch_zip(tmp_path / name, pickle_records(records), storages)


def _record(offset=0, size=(4,), stride=(1,), numel=4, key="0", cls=torch.FloatStorage):
    return TensorRecord(Storage(cls, key, numel), offset, size, stride)


def test_the_crafting_helper_writes_zips_torch_and_the_reader_agree_on(tmp_path):
    path = _bin(tmp_path, {"w": _record(offset=1, size=(3,))})
    got = SafetensorsReader().read_tensors(path, ["w"])["w"]
    torch.testing.assert_close(got, torch.load(path, weights_only=True)["w"])
    torch.testing.assert_close(got, FLOATS[1:])


@pytest.mark.parametrize("name, record, match", [
    ("larger than its storage", _record(size=(20,)), "outside its storage"),
    ("offset past the storage", _record(offset=3, size=(2,)), "outside its storage"),
    ("negative storage offset", _record(offset=-2), "malformed tensor record"),
    ("negative size", _record(size=(-4,)), "malformed tensor record"),
    ("float offset", _record(offset=1.0, size=(3,)), "malformed tensor record"),
    ("string size", _record(size=("4",)), "malformed tensor record"),
    ("stride rank", _record(stride=(1, 1)), "malformed tensor record"),
    ("not contiguous", _record(size=(2, 2), stride=(1, 2)), "not contiguous"),
    ("record numel != entry bytes", _record(numel=3, size=(3,)), "holds 16 bytes"),
    ("negative numel", _record(numel=-4), "malformed tensor record"),
    ("key not a string", _record(key=0), "malformed tensor record"),
    ("storage entry missing", _record(key="9"), "missing"),
])
def test_malformed_torch_zip_records(tmp_path, name, record, match):
    _refused(_bin(tmp_path, {"w": record}), match, tensor="w" if "missing" not in match else None)


def test_a_bin_tensor_larger_than_its_storage_no_longer_reads_the_next_entry(tmp_path):
    path = _bin(tmp_path, {"w": _record(size=(20,))})
    with pytest.raises(CheckpointFormatError, match="outside its storage"):
        SafetensorsReader().read_tensors(path, ["w"])
    with pytest.raises(RuntimeError):  # and torch itself refuses it too
        torch.load(path, weights_only=True)


class _ReduceOnStorage:
    def __reduce__(self):
        return (torch.FloatStorage, (4,))


class _BadPersistentId:
    pass


@pytest.mark.parametrize("name, state, match", [
    ("REDUCE on a storage class", {"w": _ReduceOnStorage()}, "corrupt data.pkl"),
    ("deep nesting", None, "deeper than"),
    ("a dict containing itself", "self", "shares one dict"),
    ("a billion laughs of shared dicts", "laughs", "shares one dict"),
    ("a non-string key", {3: _record()}, "non-string key"),
])
def test_malformed_pickles(tmp_path, name, state, match):
    if state is None:
        state = _record()
        for _ in range(50):
            state = {"m": state}
    elif state == "self":
        state = {}
        state["m"] = state
    elif state == "laughs":  # 40 keys -> one dict, 6 levels: 40**6 paths if walked naively
        state = {"w": _record()}
        for _ in range(6):
            state = {f"k{i}": state for i in range(40)}
    _refused(_bin(tmp_path, state), match)


@pytest.mark.parametrize("name, blob, match", [
    ("not a zip", b"\x80\x02}q\x00.", "not a torch.save zip"),
    ("empty", b"", "not a torch.save zip"),
])
def test_not_a_zip(tmp_path, name, blob, match):
    path = tmp_path / "x.bin"
    path.write_bytes(blob)
    _refused(path, match)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9, 0.99])
def test_truncated_and_corrupted_zips_fail_with_one_error(tmp_path, cut):
    torch.save(OrderedDict(w=FLOATS, v=torch.ones(3, dtype=torch.int64)), tmp_path / "ok.bin")
    blob = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(blob[: int(len(blob) * cut)])
    _refused(tmp_path / "cut.bin")
    pkl_at = blob.index(b"data.pkl") + len(b"data.pkl")  # the pickle's first bytes
    garbled = blob[:pkl_at] + bytes(b ^ 0x5A for b in blob[pkl_at : pkl_at + 40]) + blob[pkl_at + 40:]
    (tmp_path / "garbled.bin").write_bytes(garbled)
    _refused(tmp_path / "garbled.bin")


def test_bad_persistent_ids_and_truncated_pickles(tmp_path):
    good = pickle_records({"w": _record()})
    for name, pkl in {"truncated": good[: len(good) // 2],
                      "garbage": b"\x80\x02\xff\xff\xff",
                      "pid tuple too short": b"\x80\x02(X\x07\x00\x00\x00storageK\x01tQ."}.items():
        path = write_torch_zip(tmp_path / f"{name}.bin", pkl, {"0": FLOATS.numpy().tobytes()})
        _refused(path, "data.pkl")


# ---- Meta's params.json + consolidated.*.pth ----------------------------------------------

@pytest.fixture
def meta_ckpt(tmp_path):
    from transformers import LlamaModel

    from encoders.lm.meta_llama import meta_config
    from tests.test_meta_llama import PARAMS, save_meta_checkpoint

    config = meta_config(PARAMS)
    config.vocab_size = 64
    torch.manual_seed(0)
    save_meta_checkpoint(tmp_path / "7B", LlamaModel(config).eval(), 2)
    return tmp_path / "7B", CheckpointDir(tmp_path / "7B", "weights-dir", "meta/llama")


@pytest.mark.parametrize("params, match", [
    ("[1, 2]", "not a JSON object"),
    ("{\"dim\": ", "not Meta's params.json"),
    ('{"n_layers": 3, "n_heads": 4}', "dim = None"),
    ('{"dim": "32", "n_layers": 3, "n_heads": 4}', "dim = '32'"),
    ('{"dim": 32, "n_layers": 3, "n_heads": 0}', "n_heads = 0"),
    ('{"dim": 32, "n_layers": 3.5, "n_heads": 4}', "n_layers = 3.5"),
    ('{"dim": 32, "n_layers": 3, "n_heads": 4, "norm_eps": -1}', "norm_eps = -1"),
    ('{"dim": 32, "n_layers": 3, "n_heads": 5}', "do not divide"),
    ('{"dim": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 3}', "do not divide"),
])
def test_malformed_params_json(meta_ckpt, params, match):
    folder, ckpt = meta_ckpt
    (folder / "params.json").write_text(params)
    with pytest.raises(CheckpointFormatError) as err:
        load_config(get_family("llama"), ckpt)
    assert "params.json" in str(err.value) and match in str(err.value)


def test_meta_slices_that_do_not_join_name_the_tensor(meta_ckpt):
    folder, ckpt = meta_ckpt
    shard = torch.load(folder / "consolidated.01.pth", weights_only=True)
    shard["layers.1.attention.wq.weight"] = shard["layers.1.attention.wq.weight"][:, :-1].clone()
    torch.save(shard, folder / "consolidated.01.pth")
    with pytest.raises(CheckpointFormatError, match=r"layers\.1\.attention\.wq\.weight"):
        load_layers(get_family("llama"), ckpt, [1])
    shard["layers.1.attention.wq.weight"] = torch.ones(3)
    torch.save(shard, folder / "consolidated.01.pth")
    with pytest.raises(CheckpointFormatError, match=r"layers\.1\.attention\.wq\.weight"):
        load_layers(get_family("llama"), ckpt, [1])
    json.loads((folder / "params.json").read_text())  # nothing else was touched


# ---- config.json --------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    {"num_attention_heads": 0}, {"num_attention_heads": 3}, {"hidden_size": "big"},
    {"hidden_size": 1e400}, {"num_hidden_layers": -1}, {"ffn_dim": None},
    {"do_layer_norm_before": "x"}, {"model_type": 5},
], ids=str)
def test_malformed_configs_are_one_error_with_or_without_the_registry(tmp_path, change):
    from encoders.lm.layer_loading import check_layers
    from tests.conftest import save_tiny_opt

    _, ckpt = save_tiny_opt(tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    (tmp_path / "ck" / "config.json").write_text(json.dumps({**config, **change}))
    opt = get_family("opt")
    for read in (lambda c: load_layers(opt, c, [1]),
                 lambda c: check_layers(opt, c, [1], size=opt.size("125m"))):
        fresh = CheckpointDir(ckpt.location, ckpt.source, ckpt.repo_id)
        with pytest.raises(CheckpointFormatError) as err:
            read(fresh)
        assert str(tmp_path / "ck") in str(err.value) and "\n" not in str(err.value)


def test_a_fifo_shard_or_config_is_refused_not_waited_on(tmp_path):
    import os

    from tests.conftest import save_tiny_opt

    _, ckpt = save_tiny_opt(tmp_path / "ck")
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.decoder.layers.1.fc1.weight"]
    (tmp_path / "ck" / shard).unlink()
    os.mkfifo(tmp_path / "ck" / shard)  # opening it for reading would block forever
    with pytest.raises(CheckpointFormatError, match="not a regular file"):
        load_layers(get_family("opt"), ckpt, [1])
    (tmp_path / "ck" / "config.json").unlink()
    os.mkfifo(tmp_path / "ck" / "config.json")
    fresh = CheckpointDir(ckpt.location, ckpt.source, ckpt.repo_id)
    with pytest.raises(CheckpointFormatError, match="config.json: not a regular file"):
        load_layers(get_family("opt"), fresh, [1])


def test_metadata_that_is_not_text_or_too_large_is_one_error(tmp_path):
    from tests.conftest import save_tiny_opt

    _, ckpt = save_tiny_opt(tmp_path / "ck")
    config = tmp_path / "ck" / "config.json"
    config.write_bytes(b'{"model_type": "\xff\xfe"}')
    with pytest.raises(CheckpointFormatError, match="config.json: not UTF-8"):
        load_layers(get_family("opt"), ckpt, [1])
    with open(config, "wb") as f:  # sparse: 100 MB of nothing, allocated by no one
        f.truncate(100 * 1024 * 1024)
    fresh = CheckpointDir(ckpt.location, ckpt.source, ckpt.repo_id)
    with pytest.raises(CheckpointFormatError, match="too large for a config"):
        load_layers(get_family("opt"), fresh, [1])
