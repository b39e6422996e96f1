"""Fuzzing the checkpoint readers with Hypothesis (issue 14, item 3).

Random mutations of valid safetensors headers, torch.save pickles and shard indexes. The
oracle for every mutated checkpoint: the reader either raises CheckpointFormatError, or it
loads tensors identical to the original's, or (a mutation can write a different *valid*
file, e.g. two same-sized tensors' offsets swapped) identical to what the format's own
reference loader (``safetensors.torch.load_file``, ``torch.load(weights_only=True)``) loads
from the mutated file. Any other exception, or tensors that are neither, fails. An audit
hook records every file opened during a read: none may lie outside the checkpoint folder.

The default run tests the same cases every time (Hypothesis derandomized, its example
database off): 300 examples per test. Random exploration is asked for:
``LMBLOCKS_FUZZ_EXAMPLES`` sets the examples per test, and ``LMBLOCKS_FUZZ_SEED`` draws new
cases (``random``, or an integer to repeat an exploration); with a seed the database is on, so
a failure found is replayed first next time. Run with ``--hypothesis-show-statistics`` to see
how many cases were refused, loaded identical, or loaded as a different valid file.
"""

from __future__ import annotations

import json
import os
import pickletools
import struct
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from encoders.lm.layer_loading import load_layers
from encoders.lm.registry import get_family
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import SAFETENSORS_DTYPES, CheckpointFormatError
from tests.conftest import save_tiny_opt
from tests.crafted import data_pkl, rezip, split_safetensors, write_safetensors
from tests.suite_guard import read_peak_rss, reset_peak_rss

EXAMPLES = int(os.environ.get("LMBLOCKS_FUZZ_EXAMPLES", "300"))
SEED = os.environ.get("LMBLOCKS_FUZZ_SEED")  # unset: the same cases every run
_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow, HealthCheck.data_too_large],
                     **({"database": None} if SEED is None else {}))


def FUZZ(test):  # a decorator, named like Hypothesis' own ``settings`` objects
    """The fuzz tests' settings, and the exploration's seed when one is given."""
    test = _SETTINGS(test)
    return seed(int(SEED))(test) if SEED not in (None, "random") else test

_OPENED: list[str] | None = None
_READER: int | None = None  # the thread the read runs on (the suite's memory watchdog reads /proc)


def _audit(event_name: str, args: tuple) -> None:
    if _OPENED is not None and event_name == "open" and threading.get_ident() == _READER and (
            args and isinstance(args[0], str | bytes | os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # hooks cannot be removed: this one records only while armed


def _read(reader_call, folder: Path):
    """Run a read with the audit hook armed; every file it opened must be inside ``folder``
    (imports a lazy read triggers are Python's, not the checkpoint's: .py/.pyc skipped)."""
    global _OPENED, _READER
    _OPENED, _READER = [], threading.get_ident()
    try:
        return reader_call()
    finally:
        opened, _OPENED = _OPENED, None
        root = folder.resolve()
        outside = [p for p in opened if not p.endswith((".py", ".pyc"))
                   and not Path(p).resolve().is_relative_to(root)]
        assert outside == [], f"opened outside the checkpoint: {outside}"


# A same-width integer type for every width a checkpoint's dtypes have: ``view`` to it is
# allowed at any strides (a view to another width needs a last stride of 1), and integers
# compare bit for bit (NaN payloads, -0.0).
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Every tensor of ``a`` is in ``b`` with the same dtype, shape and elements, bit for bit.

    The reference loaders return views (stride 0 over one stored element, size-1 dimensions
    with any stride, zero-size tensors): compared in place by ``torch.equal``, which walks
    both and allocates nothing, where a contiguous copy of a stride-0 view of a fuzzed size
    would be as large as that size. Equal shapes bound the walk by ``a``'s own elements."""
    return a.keys() <= b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and (a[k].numel() == 0 or torch.equal(a[k].view(_BITS[a[k].element_size()]),
                                              b[k].view(_BITS[b[k].element_size()])))
        for k in a)


def _judge(path: Path, names: list[str], original: dict[str, torch.Tensor], reference) -> None:
    """The oracle: refused with CheckpointFormatError, or identical to the original, or to the
    reference loader's reading of the mutated file."""
    try:
        got = _read(lambda: SafetensorsReader().read_tensors(path, names), path.parent)
    except CheckpointFormatError as e:
        assert str(path) in str(e) and "\n" not in str(e), str(e)
        event("refused: CheckpointFormatError")
        return
    if _same(got, original):
        event("loaded: identical to the original")
        return
    try:
        ref = reference(path)
    except Exception as e:  # noqa: BLE001 - the reference refusing is the finding
        raise AssertionError(f"loaded tensors the reference loader refuses ({e})") from None
    assert _same(got, ref), "loaded tensors that differ from the reference loader's"
    event("loaded: a different valid file, same as the reference loader")


def test_the_oracle_compares_views_bit_for_bit_in_place():
    """What the reference loaders return (stride 0 over one stored element, size-1 and
    zero-size dimensions with any stride) is compared bit for bit, and in place: a stride-0
    view of 2**28 floats against the same values in another storage raises this process's
    peak memory by less than 64 MiB, where a contiguous copy would take 1 GiB."""
    one = torch.ones(1)
    assert _same({"a": one}, {"a": torch.ones(1).as_strided((1,), (0,))})  # the case
    assert not _same({"a": one}, {"a": torch.zeros(1).as_strided((1,), (0,))})
    assert not _same({"a": torch.zeros(1)}, {"a": -torch.zeros(1)})  # -0.0 == 0.0, not its bits
    nans = torch.tensor([0x7FC00000, 0x7FC00001], dtype=torch.int32).view(torch.float32)
    assert not _same({"a": nans[:1]}, {"a": nans[1:]}) and _same({"a": nans}, {"a": nans.clone()})
    assert _same({"a": torch.empty(0, 3)}, {"a": torch.empty(0, 3).as_strided((0, 3), (0, 0))})
    assert not _same({"a": torch.empty(0, 3)}, {"a": torch.empty(3, 0)})
    flags = torch.tensor([True, False])
    assert _same({"b": flags}, {"b": flags.clone(), "extra": one})
    assert not _same({"b": flags}, {"c": flags})  # a tensor the other lacks
    assert not _same({"h": one.half()}, {"h": one.bfloat16()})
    big = torch.zeros(1).expand(2**28)
    reset_peak_rss()
    before = read_peak_rss()
    assert _same({"v": big}, {"v": torch.zeros(1).as_strided((2**28,), (0,))})
    if before is not None:  # Linux: the kernel's peak, reset above
        assert read_peak_rss() - before < 64 << 20
    assert not _same({"v": big}, {"v": torch.ones(1).expand(2**28)})


# ---- JSON values a mutation writes ---------------------------------------------------------

SMALL_INTS = st.integers(-64, 128)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | SMALL_INTS
    | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8)
OFFSETS = st.lists(SMALL_INTS, min_size=0, max_size=3) | ANY_JSON
SHAPES = st.lists(st.integers(-2, 8), max_size=3) | ANY_JSON
DTYPES = st.sampled_from([*SAFETENSORS_DTYPES, "F128", "f32", ""]) | ANY_JSON


# ---- safetensors headers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def st_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("st")
    torch.manual_seed(0)  # the same files every run
    tensors = {"a": torch.randn(2, 3), "b": torch.arange(4, dtype=torch.int64),
               "c": torch.randn(3).to(torch.bfloat16), "d": torch.zeros(0)}
    save_file(tensors, str(folder / "base.safetensors"), metadata={"format": "pt"})
    header, data = split_safetensors(folder / "base.safetensors")
    return folder, header, data, tensors


@st.composite
def header_mutation(draw, names: list[str]):
    kind = draw(st.sampled_from(["field", "drop-field", "drop-tensor", "rename", "swap",
                                 "entry", "metadata", "header"]))
    name = draw(st.sampled_from(names))
    if kind == "field":
        key = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        value = draw({"dtype": DTYPES, "shape": SHAPES, "data_offsets": OFFSETS}[key])
        return kind, name, key, value
    if kind == "drop-field":
        return kind, name, draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None
    if kind in ("swap", "rename"):
        return kind, name, draw(st.sampled_from(names)), None
    return kind, name, None, draw(ANY_JSON)


def _apply(header: dict, mutation) -> object:
    kind, name, key, value = mutation
    if kind == "field":
        header[name][key] = value
    elif kind == "drop-field":
        header[name].pop(key, None)
    elif kind == "drop-tensor":
        header.pop(name)
    elif kind == "rename" and key in header:
        header[key] = header.pop(name)
    elif kind == "swap" and isinstance(header.get(key), dict) and isinstance(header[name], dict):
        header[name]["data_offsets"], header[key]["data_offsets"] = (
            header[key].get("data_offsets"), header[name].get("data_offsets"))
    elif kind == "entry":
        header[name] = value
    elif kind == "metadata":
        header["__metadata__"] = value
    elif kind == "header":
        return value
    return header


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_headers(st_base, data):
    folder, header, blob, tensors = st_base
    names = [n for n in header if n != "__metadata__"]
    mutated: object = json.loads(json.dumps(header))
    for mutation in data.draw(st.lists(header_mutation(names), min_size=1, max_size=3)):
        if isinstance(mutated, dict) and mutation[1] in mutated and (
                mutation[0] not in ("field", "drop-field") or isinstance(mutated[mutation[1]], dict)):
            mutated = _apply(mutated, mutation)
    raw = json.dumps(mutated).encode()
    if data.draw(st.booleans()):  # and sometimes a few bytes flipped, cut or added
        raw = bytearray(raw)
        for pos, byte in data.draw(st.lists(st.tuples(st.integers(0, max(len(raw) - 1, 0)),
                                                       st.integers(0, 255)), max_size=3)):
            if raw:
                raw[pos % len(raw)] = byte
        raw = bytes(raw)
    tail = data.draw(st.sampled_from(["same", "cut", "extra"]))
    body = {"same": blob, "cut": blob[: len(blob) // 2], "extra": blob + b"\0" * 8}[tail]
    path = write_safetensors(folder / "mutated.safetensors", None, body, raw=raw)
    if data.draw(st.booleans()):  # the length prefix itself
        length = data.draw(st.integers(0, 2**64 - 1) | st.integers(0, len(raw) + 64))
        path.write_bytes(struct.pack("<Q", length) + path.read_bytes()[8:])
    _judge(path, names, tensors, lambda p: load_file(str(p)))


# ---- torch.save pickles -------------------------------------------------------------------

@pytest.fixture(scope="module")
def zip_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zip")
    torch.manual_seed(0)
    state = {"a": torch.randn(2, 3), "b": torch.arange(4, dtype=torch.int64),
             "c": torch.randn(3).to(torch.bfloat16),
             "nested": {"d": torch.randn(2).half()}}
    torch.save(state, folder / "base.bin")
    ops = list(pickletools.genops(data_pkl(folder / "base.bin")))
    pkl = data_pkl(folder / "base.bin")
    spans = [(op, arg, pos, (ops[i + 1][2] if i + 1 < len(ops) else len(pkl)))
             for i, (op, arg, pos) in enumerate(ops)]
    flat = {"a": state["a"], "b": state["b"], "c": state["c"], "nested.d": state["nested"]["d"]}
    return folder, pkl, spans, flat


def _int_op(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _text_op(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


INSERTABLE = [b"R", b"b", b"t", b"\x86", b"}", b"(", b"u", b"0", b"\x88", b"N", b"]", b"e",
              b"ctorch\nFloatStorage\n", b"ccollections\nOrderedDict\n",
              b"ctorch._utils\n_rebuild_tensor_v2\n", b"Q", b"s", b")"]
TEXTS = st.sampled_from(["0", "1", "2", "3", "9", "cpu", "storage", "a", "b", "", "../x"]) | st.text(
    max_size=5)


@st.composite
def pickle_mutation(draw, n_ops: int):
    kind = draw(st.sampled_from(["int", "int", "text", "delete", "duplicate", "insert",
                                 "swap", "byte"]))
    i = draw(st.integers(0, n_ops - 1))
    if kind == "int":
        return kind, i, draw(st.integers(-8, 64) | st.integers(-(2**40), 2**70))
    if kind == "text":
        return kind, i, draw(TEXTS)
    if kind == "insert":
        return kind, i, draw(st.sampled_from(INSERTABLE))
    if kind == "byte":
        return kind, i, draw(st.integers(0, 255))
    return kind, i, draw(st.integers(0, n_ops - 1))


def _mutate_pickle(spans, pkl: bytes, mutations) -> bytes:
    pieces = [pkl[pos:end] for _, _, pos, end in spans]
    for kind, i, value in mutations:
        i %= len(pieces)
        op = spans[i][0].name if i < len(spans) else ""
        if kind == "int" and op in ("BININT", "BININT1", "BININT2", "LONG1"):
            pieces[i] = _int_op(value)
        elif kind == "text" and op == "BINUNICODE":
            pieces[i] = _text_op(value)
        elif kind == "delete":
            pieces[i] = b""
        elif kind == "duplicate":
            pieces[i] = pieces[i] * 2
        elif kind == "insert":
            pieces[i] = value + pieces[i]
        elif kind == "swap":
            j = value % len(pieces)
            pieces[i], pieces[j] = pieces[j], pieces[i]
        elif kind == "byte" and pieces[i]:
            pieces[i] = bytes([value]) + pieces[i][1:]
    return b"".join(pieces)


def _torch_reference(path: Path) -> dict[str, torch.Tensor]:
    def flat(obj, prefix=""):
        out = {}
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                out[f"{prefix}{k}"] = v
            elif isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
        return out

    # lmblocks reads every storage to the CPU whatever device it was saved from; so does
    # the reference (a storage's location tag, "cuda:0" or a fuzzed "0", is not the data)
    return flat(torch.load(path, weights_only=True, map_location="cpu"))


@FUZZ
@given(data=st.data())
def test_mutated_torch_zip_pickles(zip_base, data):
    folder, pkl, spans, flat = zip_base
    mutations = data.draw(st.lists(pickle_mutation(len(spans)), min_size=1, max_size=3))
    replace = {"data.pkl": _mutate_pickle(spans, pkl, mutations)}
    if data.draw(st.integers(0, 4)) == 0:  # sometimes a storage entry loses bytes too
        replace[f"data/{data.draw(st.sampled_from('0123'))}"] = b"\x01" * data.draw(
            st.integers(0, 12))
    path = rezip(folder / "base.bin", folder / "mutated.bin", replace)
    _judge(path, list(flat), flat, _torch_reference)


# ---- shard indexes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A tiny sharded OPT, its layer 2 as loaded, and copies of its shards outside."""
    root = tmp_path_factory.mktemp("index")
    _, ckpt = save_tiny_opt(root / "ckpt")
    index = json.loads((root / "ckpt" / "model.safetensors.index.json").read_text())
    (root / "elsewhere").mkdir()
    for shard in set(index["weight_map"].values()):
        (root / "elsewhere" / shard).write_bytes((root / "ckpt" / shard).read_bytes())
    layer = load_layers(get_family("opt"), ckpt, [2]).layers[0].state_dict()
    return root, ckpt, index, layer


SHARD_NAMES = st.sampled_from([
    "../elsewhere/model-00001-of-00002.safetensors", "../../../../etc/passwd", "/etc/passwd",
    "..", ".", "", "sub/../../x", "C:\\x.safetensors", "file:///etc/passwd", "s3://b/x",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "nope.safetensors",
    "config.json", "model.safetensors.index.json", "./model-00001-of-00002.safetensors",
    "\0", "a\\..\\b"]) | st.text(max_size=12) | ANY_JSON


@FUZZ
@given(data=st.data())
def test_mutated_shard_indexes(sharded, data):
    root, ckpt, index, layer = sharded
    mutated = json.loads(json.dumps(index))
    keys = sorted(mutated["weight_map"])
    for kind in data.draw(st.lists(st.sampled_from(["entry", "entry", "entry", "map", "index",
                                                    "drop"]), min_size=1, max_size=3)):
        if not isinstance(mutated, dict) or not isinstance(mutated.get("weight_map"), dict):
            break
        if kind == "entry":
            key = data.draw(st.sampled_from(keys))
            mutated["weight_map"][key] = data.draw(SHARD_NAMES)
        elif kind == "drop":
            mutated["weight_map"].pop(data.draw(st.sampled_from(keys)), None)
        elif kind == "map":
            mutated["weight_map"] = data.draw(ANY_JSON)
        else:
            mutated = data.draw(ANY_JSON)
    index_path = root / "ckpt" / "model.safetensors.index.json"
    index_path.write_text(json.dumps(mutated))
    fresh = type(ckpt)(ckpt.location, ckpt.source, ckpt.repo_id)  # no cached index text
    try:
        loaded = _read(lambda: load_layers(get_family("opt"), fresh, [2]), root / "ckpt")
    except CheckpointFormatError as e:
        assert "\n" not in str(e), str(e)
        event("refused: CheckpointFormatError")
        return
    finally:
        index_path.write_text(json.dumps(index))
    assert _same(loaded.layers[0].state_dict(), layer), "loaded a different layer"
    event("loaded: identical to the original")


# ---- GGUF headers -------------------------------------------------------------------------

def _gguf_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every number in a GGUF header: counts, lengths, value types, array
    headers, scalar values, dimensions, GGML types and tensor offsets (what a mutation hits)."""
    fields = [(4, 4), (8, 8), (16, 8)]
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(pos):
        fields.append((pos, 8))
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]

    def value(pos, kind):
        if kind == 8:
            return string(pos)
        if kind == 9:
            fields.extend([(pos, 4), (pos + 4, 8)])
            item, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(count):
                pos = value(pos, item)
            return pos
        fields.append((pos, sizes[kind]))
        return pos + sizes[kind]

    for _ in range(n_kv):
        pos = string(pos)
        fields.append((pos, 4))
        pos = value(pos + 4, struct.unpack_from("<I", data, pos)[0])
    for _ in range(n_tensors):
        pos = string(pos)
        fields.append((pos, 4))
        dims = struct.unpack_from("<I", data, pos)[0]
        fields.extend((pos + 4 + 8 * d, 8) for d in range(dims))
        pos += 4 + 8 * dims
        fields.extend([(pos, 4), (pos + 4, 8)])
        pos += 12
    return fields


def _gguf_tensors(table, raw: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {n: (*table.ggml[n], bytes(raw[n].numpy())) for n in raw}


@pytest.fixture(scope="module")
def gguf_base(tmp_path_factory):
    import gguf
    import numpy as np

    folder = tmp_path_factory.mktemp("gguf")
    writer = gguf.GGUFWriter(str(folder / "base.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_array("general.tags", ["a", "bc"])
    writer.add_array("test.numbers", [1, 2, 3])
    rng = np.random.default_rng(0)
    q8 = gguf.GGMLQuantizationType.Q8_0
    writer.add_tensor("a", rng.standard_normal((2, 32)).astype(np.float32))
    writer.add_tensor("b", rng.standard_normal(32).astype(np.float16))
    writer.add_tensor("c", gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32),
                                                q8), raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = (folder / "base.gguf").read_bytes()
    reader = SafetensorsReader()
    raw = reader.read_tensors(folder / "base.gguf", ["a", "b", "c"])
    original = _gguf_tensors(reader.read_header(folder / "base.gguf"), raw)
    return folder, data, _gguf_fields(data), original


def _gguf_reference(path: Path) -> dict[str, tuple]:
    """gguf-py's own reader: each tensor's type, shape (torch order) and bytes."""
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)),
                     t.data.tobytes()) for t in GGUFReader(path).tensors}


@FUZZ
@given(data=st.data())
def test_mutated_gguf_headers(gguf_base, data):
    """Numbers of the header overwritten (small, near-limit or any 64-bit values), bytes
    flipped, the file cut or extended: refused in one line naming the file, or read as the
    original, or as gguf-py's own reader reads the mutated file; nothing opened outside."""
    folder, blob, fields, original = gguf_base
    mutated = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["field", "field", "field", "byte", "cut", "extra"]))
        if kind == "field":
            pos, width = data.draw(st.sampled_from(fields))
            value = data.draw(st.integers(0, 64) | st.integers(0, 2 ** (8 * width) - 1)
                              | st.sampled_from([1 << 24, (1 << 24) + 1, 31, 33, 96, 128]))
            mutated[pos:pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif kind == "byte":
            pos = data.draw(st.integers(0, len(blob) - 1))
            if pos < len(mutated):
                mutated[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del mutated[data.draw(st.integers(0, len(mutated))):]
        else:
            mutated += bytes(data.draw(st.integers(1, 64)))
    path = folder / "mutated.gguf"
    path.write_bytes(bytes(mutated))
    try:
        def read():
            reader = SafetensorsReader()
            return _gguf_tensors(reader.read_header(path), reader.read_tensors(path, original))
        got = _read(read, folder)
    except CheckpointFormatError as e:
        assert str(path) in str(e) and "\n" not in str(e), str(e)
        event("refused: CheckpointFormatError")
        return
    if got == original:
        event("loaded: identical to the original")
        return
    try:
        ref = _gguf_reference(path)
    except Exception as e:  # noqa: BLE001 - the reference refusing is the finding
        raise AssertionError(f"loaded tensors gguf-py's reader refuses ({e})") from None
    assert all(ref.get(n) == v for n, v in got.items()), "differs from gguf-py's reading"
    event("loaded: a different valid file, same as gguf-py's reader")
