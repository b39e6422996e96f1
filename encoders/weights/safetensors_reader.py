"""Read selected tensors out of safetensors files by byte range.

Why not ``safetensors.safe_open``: it memory-maps a local file, which is right for a
local disk but gives no way to count or bound the bytes a read pulls in, and cannot
work over a remote file object. This reader parses the (small) JSON header, then
seeks and reads only the byte ranges of the requested tensors, coalescing adjacent
ranges into one read. It works on any seekable binary file object, so the same code
serves local files now and fsspec/HTTP range reads later, and its ``bytes_read``
counter is what the tests and ``bench/load_layer.py`` measure.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import torch

from encoders.weights.gguf_reader import MAGIC as GGUF_MAGIC
from encoders.weights.gguf_reader import parse_gguf
from encoders.weights.tensors import (
    ITEMSIZE,
    SAFETENSORS_DTYPES,
    CheckpointFormatError,
    TensorInfo,
    TensorTable,
    is_count,
    numel,
)
from encoders.weights.torch_zip import parse_torch_zip

# A header larger than this is not a safetensors header: refuse instead of allocating.
MAX_HEADER_BYTES = 100 * 1024 * 1024


Opener = Callable[[str], BinaryIO]


def open_local(path: str) -> BinaryIO:
    return open(path, "rb")


class SafetensorsReader:
    """Reads headers and tensor byte ranges, counting every byte and every file opened."""

    def __init__(self, opener: Opener = open_local) -> None:
        self._opener = opener
        self.bytes_read = 0
        self.files_opened: list[str] = []
        self._headers: dict[str, TensorTable] = {}

    def _open(self, path: str) -> BinaryIO:
        self.files_opened.append(str(path))
        return self._opener(str(path))

    def _read_exact(self, f: BinaryIO, n: int, path: str, what: str) -> bytes:
        data = f.read(n)
        self.bytes_read += len(data)
        if len(data) != n:
            raise CheckpointFormatError(
                f"{path}: truncated file: wanted {n} bytes of {what}, got {len(data)}"
            )
        return data

    def _parse_header(self, f: BinaryIO, path: str, file_size: int | None) -> TensorTable:
        (n,) = struct.unpack("<Q", self._read_exact(f, 8, path, "header length"))
        if n > MAX_HEADER_BYTES or (file_size is not None and 8 + n > file_size):
            raise CheckpointFormatError(f"{path}: not a safetensors file (header length {n})")
        raw = _decode_header(self._read_exact(f, n, path, "header"), path)
        data_size = None if file_size is None else file_size - 8 - n
        tensors = validate_entries(raw, path, 8 + n, data_size)
        return TensorTable(str(path), 8 + n, tensors, raw.get("__metadata__") or {})

    def read_header(self, path: str | Path) -> TensorTable:
        path = str(path)
        if path not in self._headers:
            with self._open(path) as f:
                self._headers[path] = self._any_header(f, path)
        return self._headers[path]

    def _any_header(self, f: BinaryIO, path: str) -> TensorTable:
        """safetensors, a torch.save zip (``.bin``/``.pth``/``.pt``, or any name whose bytes
        start as a zip does) read weights-only, or a GGUF file (by its magic: an Ollama blob
        has no extension), its tensors as raw byte ranges."""
        magic = f.read(4)
        f.seek(0)
        read_exact = lambda fh, n, what: self._read_exact(fh, n, path, what)
        if path.endswith((".bin", ".pth", ".pt")) or magic == b"PK\x03\x04":
            return parse_torch_zip(f, path, read_exact)
        if magic == GGUF_MAGIC:
            return parse_gguf(f, path, read_exact, _file_size(f))
        return self._parse_header(f, path, _file_size(f))

    def read_tensors(
        self, path: str | Path, names: Iterable[str]
    ) -> dict[str, torch.Tensor]:
        """Materialise only ``names`` from one file; adjacent ranges are read in one go."""
        path = str(path)
        wanted = sorted(set(names))
        header = self._headers.get(path)
        with self._open(path) as f:
            if header is None:
                header = self._headers[path] = self._any_header(f, path)
            missing = [n for n in wanted if n not in header.tensors]
            if missing:
                raise CheckpointFormatError(f"{path}: missing tensor(s) {missing[:5]}")
            infos = sorted(((header.tensors[n], n) for n in wanted), key=lambda p: p[0].start)
            out: dict[str, torch.Tensor] = {}
            for run in _coalesce(infos):
                start, end = run[0][0].start, run[-1][0].end
                f.seek(start)
                buf = bytearray(self._read_exact(f, end - start, path, f"tensor {run[0][1]}"))
                for info, name in run:
                    out[name] = _to_tensor(buf, info.start - start, info, path, name)
            return out


def _decode_header(data: bytes, path: str) -> dict:
    """The JSON object of a header; nesting is bounded by Python's recursion limit, caught."""
    if not data.lstrip(b" ").startswith(b"{"):
        raise CheckpointFormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, nesting too deep
        raise CheckpointFormatError(f"{path}: corrupt safetensors header ({_short(e)})") from None
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = raw.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointFormatError(
            f"{path}: corrupt safetensors header (__metadata__ must map names to strings)")
    return raw


def validate_entries(raw: dict, path: str, base: int, data_size: int | None) -> dict[str, TensorInfo]:
    """safetensors' own rules, so a file loads here exactly when ``safe_open`` accepts it:
    every entry has a known dtype, a shape of non-negative integers and two integer offsets;
    sorted by offset, the entries tile the data section with no gap or overlap, each spans
    exactly numel x dtype size bytes, and the last ends where the file ends."""
    entries: list[tuple[int, int, str, str, tuple[int, ...]]] = []
    for name, info in raw.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise CheckpointFormatError(f"{where}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise CheckpointFormatError(
                f"{where}: unknown dtype {dtype!r}; valid: {', '.join(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or not all(is_count(d) for d in shape):
            raise CheckpointFormatError(f"{where}: shape {shape!r} is not a list of sizes >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(is_count(o) for o in offsets) and offsets[0] <= offsets[1]):
            raise CheckpointFormatError(
                f"{where}: data_offsets {offsets!r} are not [start, end] with 0 <= start <= end")
        entries.append((offsets[0], offsets[1], name, dtype, tuple(shape)))
    entries.sort()
    tensors: dict[str, TensorInfo] = {}
    expected_start = 0
    for start, end, name, dtype, shape in entries:
        where = f"{path}: tensor {name!r}"
        if start != expected_start:
            raise CheckpointFormatError(
                f"{where}: data_offsets [{start}, {end}] "
                + ("overlap another tensor" if start < expected_start else "leave a gap")
                + f" (expected start {expected_start})")
        if end - start != numel(shape) * ITEMSIZE[dtype]:
            raise CheckpointFormatError(
                f"{where}: {end - start} bytes for shape {list(shape)} of {dtype} "
                f"({numel(shape) * ITEMSIZE[dtype]} expected)")
        expected_start = end
        tensors[name] = TensorInfo(dtype, shape, base + start, base + end)
    if data_size is not None and expected_start != data_size:
        kind = "truncated file" if expected_start > data_size else "trailing bytes"
        raise CheckpointFormatError(
            f"{path}: {kind}: header promises {base + expected_start} bytes, file has "
            f"{base + data_size}")
    return tensors


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:200]}"


def _coalesce(infos: list[tuple[TensorInfo, str]]) -> list[list[tuple[TensorInfo, str]]]:
    runs: list[list[tuple[TensorInfo, str]]] = []
    for item in infos:
        if runs and runs[-1][-1][0].end == item[0].start:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _to_tensor(buf: bytearray, offset: int, info: TensorInfo, path: str, name: str) -> torch.Tensor:
    dtype = SAFETENSORS_DTYPES.get(info.dtype)
    if dtype is None:
        raise CheckpointFormatError(f"{path}: tensor {name} has unsupported dtype {info.dtype}")
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if offset % itemsize:  # misaligned inside the run: copy this tensor's bytes out
        buf, offset = bytearray(buf[offset : offset + info.nbytes]), 0
    # A view into the run's buffer: the layer's bytes are held once, never copied again.
    flat = torch.frombuffer(buf, dtype=dtype, count=info.nbytes // itemsize, offset=offset)
    return flat.reshape(info.shape)


def _file_size(f: BinaryIO) -> int | None:
    try:
        pos = f.tell()
        size = f.seek(0, 2)
        f.seek(pos)
        return size
    except (OSError, AttributeError):
        return None
