"""GGUF headers (llama.cpp's and Ollama's format), parsed strictly into the readers' tensor table.

A GGUF file is a header (magic, version, counts, typed key/value metadata, tensor infos)
then one data section whose tensors are GGML-typed: plain (F32, F16, BF16, ...) or block-
quantised (Q4_1: blocks of 32 weights in 20 bytes). The table lists each tensor as its raw
bytes (``U8``, one byte range), so the generic reader range-reads a layer's tensors as it
does safetensors'; ``GGUFTable.ggml`` keeps each tensor's GGML type and logical shape for the
format that dequantises them (``encoders/lm/gguf_format.py``).

Why not gguf-py's ``GGUFReader``: it memory-maps the whole file and builds numpy views of
every field, which works on a local disk only and cannot bound what a hostile header makes
it allocate. This parser reads the header through a chunked buffer (1 MiB reads: a remote
file costs a few requests, not one per token string), keeps small values and skips large
arrays (the tokenizer's vocabulary) without decoding them, and checks what safetensors'
reader checks: known types only, bounded strings, arrays and counts, offsets aligned and
inside the data section, each tensor exactly its blocks' bytes, no two overlapping. Every
failure is one ``CheckpointFormatError`` naming the file. The type tables are gguf-py's.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from encoders.weights.tensors import CheckpointFormatError, TensorInfo, TensorTable, numel

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 had 32-bit counts and is gone from llama.cpp since 2023
MAX_KEY = 1 << 16  # bytes of a key
MAX_STRING = 1 << 24  # bytes of one string value (chat templates are kilobytes)
MAX_ARRAY = 1 << 24  # elements of one array (vocabularies: up to ~256k)
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 20
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_HEADER = 1 << 30  # a header past this is not a model's
KEEP_ARRAY = 4096  # arrays up to this many elements are kept; longer ones are skipped
CHUNK = 1 << 20

# GGUF value type -> struct format (scalars); 8 string, 9 array
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass
class GGUFTable(TensorTable):
    """A GGUF file's tensors (raw byte ranges, ``U8``), its metadata values and per tensor
    its GGML type name and shape in torch order (GGML lists the fastest dimension first)."""

    version: int = 3
    values: dict[str, object] = field(default_factory=dict)
    ggml: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedArray:
    """An array too long to keep (a vocabulary): its element type and length only."""

    type: int
    count: int


ReadExact = Callable[[BinaryIO, int, str], bytes]


class _Buffered:
    """Sequential reads of the header through CHUNK-sized reads of the file (counted by the
    reader's ``read_exact``); ``skip`` moves past bytes it does not return."""

    def __init__(self, f: BinaryIO, path: str, read_exact: ReadExact, size: int | None) -> None:
        self.f, self.path, self.read_exact, self.size = f, path, read_exact, size
        self.buf, self.pos, self.consumed = b"", 0, 0

    def _fill(self, n: int) -> None:
        while len(self.buf) - self.pos < n:
            want = CHUNK
            if self.size is not None:
                want = min(want, self.size - self.consumed - (len(self.buf) - self.pos))
            if want <= 0 or self.consumed + n > MAX_HEADER:
                raise CheckpointFormatError(f"{self.path}: truncated GGUF header")
            self.buf = self.buf[self.pos:] + self.read_exact(self.f, want, "GGUF header")
            self.pos = 0

    def take(self, n: int) -> bytes:
        self._fill(n)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        self.consumed += n
        return out

    def skip(self, n: int) -> None:
        if n <= len(self.buf) - self.pos:
            self.pos += n
            self.consumed += n
            return
        n -= len(self.buf) - self.pos
        self.consumed += len(self.buf) - self.pos
        self.buf, self.pos = b"", 0
        if self.size is not None and self.consumed + n > self.size:
            raise CheckpointFormatError(f"{self.path}: truncated GGUF header")
        self.f.seek(self.consumed + n)
        self.consumed += n

    def unpack(self, fmt: str) -> int | float | bool:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]


def _string(r: _Buffered, limit: int, what: str, keep: bool = True) -> str | None:
    n = r.unpack("<Q")
    if n > limit:
        raise CheckpointFormatError(f"{r.path}: {what} of {n} bytes (limit {limit})")
    if not keep:
        r.skip(n)
        return None
    try:
        return r.take(n).decode()
    except UnicodeDecodeError:
        raise CheckpointFormatError(f"{r.path}: {what} is not UTF-8") from None


def _value(r: _Buffered, kind: int, key: str, depth: int = 0) -> object:
    if kind in SCALARS:
        return r.unpack(SCALARS[kind])
    if kind == STRING:
        return _string(r, MAX_STRING, f"value of {key!r}")
    if kind != ARRAY:
        raise CheckpointFormatError(
            f"{r.path}: key {key!r} has unknown value type {kind}; valid: 0-12")
    item, count = r.unpack("<I"), r.unpack("<Q")
    if count > MAX_ARRAY or depth >= 2:
        raise CheckpointFormatError(
            f"{r.path}: key {key!r}: array of {count} elements at depth {depth + 1} "
            f"(limits: {MAX_ARRAY} elements, depth 2)")
    if item not in SCALARS and item not in (STRING, ARRAY):
        raise CheckpointFormatError(f"{r.path}: key {key!r}: array of unknown type {item}")
    keep = count <= KEEP_ARRAY
    if item in SCALARS and not keep:  # a fixed-size array: skipped in one move
        r.skip(count * struct.calcsize(SCALARS[item]))
        return SkippedArray(item, count)
    if item == STRING and not keep:
        for _ in range(count):
            _string(r, MAX_STRING, f"element of {key!r}", keep=False)
        return SkippedArray(item, count)
    return [_value(r, item, key, depth + 1) for _ in range(count)]


def parse_gguf(f: BinaryIO, path: str, read_exact: ReadExact, file_size: int | None) -> GGUFTable:
    """The header of the GGUF file open as ``f`` (at offset 0), checked (module docstring)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    r = _Buffered(f, path, read_exact, file_size)
    if r.take(4) != MAGIC:
        raise CheckpointFormatError(f"{path}: not a GGUF file (magic)")
    version = r.unpack("<I")
    if version not in VERSIONS:
        raise CheckpointFormatError(
            f"{path}: GGUF version {version}; valid: {', '.join(map(str, VERSIONS))}")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise CheckpointFormatError(
            f"{path}: {n_tensors} tensors, {n_kv} keys (limits {MAX_TENSORS}, {MAX_KV})")
    values: dict[str, object] = {}
    for _ in range(n_kv):
        key = _string(r, MAX_KEY, "a key")
        if key in values:
            raise CheckpointFormatError(f"{path}: key {key!r} appears twice")
        values[key] = _value(r, r.unpack("<I"), key)
    alignment = values.get("general.alignment", 32)
    if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1
            or alignment & (alignment - 1) or alignment > 1 << 16):
        raise CheckpointFormatError(
            f"{path}: general.alignment {alignment!r}; valid: a power of two up to 65536")
    infos = []
    for _ in range(n_tensors):
        name = _string(r, MAX_KEY, "a tensor name")
        n_dims = r.unpack("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise CheckpointFormatError(
                f"{path}: tensor {name!r} has {n_dims} dimensions; valid: 1-{MAX_DIMS}")
        dims = [r.unpack("<Q") for _ in range(n_dims)]
        kind, offset = r.unpack("<I"), r.unpack("<Q")
        infos.append((name, dims, kind, offset))
    data_start = -(-r.consumed // alignment) * alignment
    data_size = None if file_size is None else file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    ggml: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for name, dims, kind, offset in infos:
        where = f"{path}: tensor {name!r}"
        if name in tensors:
            raise CheckpointFormatError(f"{where} appears twice")
        try:
            qtype = GGMLQuantizationType(kind)
            block, block_bytes = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise CheckpointFormatError(f"{where}: unknown GGML type {kind}") from None
        if any(d < 1 or d > 1 << 40 for d in dims) or numel(tuple(dims)) > 1 << 48:
            raise CheckpointFormatError(f"{where}: dimensions {dims}; valid: 1 .. 2^40 each")
        if dims[0] % block:
            raise CheckpointFormatError(
                f"{where}: {dims[0]} elements a row is not a whole number of {qtype.name} "
                f"blocks of {block}")
        nbytes = numel(tuple(dims)) // block * block_bytes
        if offset % alignment:
            raise CheckpointFormatError(
                f"{where}: offset {offset} is not a multiple of the alignment {alignment}")
        if data_size is not None and offset + nbytes > data_size:
            raise CheckpointFormatError(
                f"{where}: bytes [{offset}, {offset + nbytes}) end past the data section "
                f"({data_size} bytes): truncated file")
        spans.append((offset, offset + nbytes, name))
        tensors[name] = TensorInfo("U8", (nbytes,), data_start + offset,
                                   data_start + offset + nbytes)
        ggml[name] = (qtype.name, tuple(reversed(dims)))
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise CheckpointFormatError(f"{path}: tensors {a!r} and {b!r} overlap")
    meta = {k: v for k, v in values.items() if isinstance(v, str)}
    return GGUFTable(path, data_start, tensors, meta, version=version, values=values, ggml=ggml)
