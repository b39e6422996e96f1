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

from encoders.weights.tensors import (
    SAFETENSORS_DTYPES,
    CheckpointFormatError,
    TensorInfo,
    TensorTable,
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
        if n > MAX_HEADER_BYTES:
            raise CheckpointFormatError(f"{path}: not a safetensors file (header length {n})")
        try:
            raw = json.loads(self._read_exact(f, n, path, "header"))
        except json.JSONDecodeError as e:
            raise CheckpointFormatError(f"{path}: corrupt safetensors header ({e})") from e
        base = 8 + n
        metadata = raw.pop("__metadata__", {}) or {}
        tensors = {}
        for name, info in raw.items():
            start, end = info["data_offsets"]
            tensors[name] = TensorInfo(info["dtype"], tuple(info["shape"]), base + start, base + end)
        if file_size is not None and tensors:
            data_end = max(t.end for t in tensors.values())
            if data_end > file_size:
                raise CheckpointFormatError(
                    f"{path}: truncated file: header promises {data_end} bytes, file has {file_size}"
                )
        return TensorTable(str(path), base, tensors, metadata)

    def read_header(self, path: str | Path) -> TensorTable:
        path = str(path)
        if path not in self._headers:
            with self._open(path) as f:
                self._headers[path] = self._any_header(f, path)
        return self._headers[path]

    def _any_header(self, f: BinaryIO, path: str) -> TensorTable:
        """safetensors, or a torch.save zip (``.bin``/``.pth``/``.pt``) read weights-only."""
        if path.endswith((".bin", ".pth", ".pt")):
            return parse_torch_zip(f, path, lambda fh, n, what: self._read_exact(fh, n, path, what))
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
