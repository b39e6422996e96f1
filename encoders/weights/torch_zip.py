"""Tensor byte ranges inside a ``torch.save`` zip archive, without running its pickle.

Big public checkpoints ship as ``pytorch_model-*.bin`` shards (facebook/opt-66b: ~9.4 GB
each) and Meta's LLaMA as ``consolidated.*.pth``: both are zip archives holding one pickle
(``data.pkl``: names, shapes, strides, storage keys) and one uncompressed entry per storage.
This module reads only the zip directory and that pickle, with an unpickler that resolves
nothing but the handful of names ``torch.save`` writes (tensor rebuild, typed storage
classes, OrderedDict) to inert stand-ins, so no arbitrary code can run. The result is the
same header table a safetensors file has (name -> dtype, shape, absolute byte range), and
the tensors are then range-read exactly like safetensors tensors.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

from encoders.weights.tensors import CheckpointFormatError, TensorInfo, TensorTable

STORAGE_DTYPES = {  # torch legacy typed-storage class -> safetensors dtype code
    "HalfStorage": "F16",
    "FloatStorage": "F32",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "BOOL": 1}
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes


@dataclass(frozen=True)
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *args) -> _TensorRef:
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *args) -> _TensorRef:
    return data


class _InertUnpickler(pickle.Unpickler):
    """Resolves only what torch.save writes, to stand-ins; anything else is refused."""

    def __init__(self, data: bytes, path: str) -> None:
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise CheckpointFormatError(
            f"{self.path}: refusing to unpickle {module}.{name} (weights-only reading)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self.path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self.path}: unsupported storage {storage_type!r}")
        return _Storage(storage_type.dtype, str(key), int(numel))


def _flat_tensors(obj, prefix: str = "") -> dict[str, _TensorRef]:
    """A state dict, possibly nested (Meta's checkpoints are flat; some wrap in 'model')."""
    out: dict[str, _TensorRef] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = f"{prefix}{k}"
            if isinstance(v, _TensorRef):
                out[name] = v
            elif isinstance(v, dict):
                out.update(_flat_tensors(v, f"{name}."))
    return out


def parse_torch_zip(f: BinaryIO, path: str, read) -> TensorTable:
    """``read(f, n, what)`` reads exactly n bytes at the current position (and counts them)."""
    try:
        archive = zipfile.ZipFile(_CountingFile(f, read))
    except zipfile.BadZipFile as e:
        raise CheckpointFormatError(
            f"{path}: not a torch.save zip archive ({e}); legacy non-zip pickles are refused"
        ) from None
    infos = {i.filename: i for i in archive.infolist()}
    pkl = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise CheckpointFormatError(f"{path}: no data.pkl in the archive")
    root = pkl[0][: -len("data.pkl")]
    refs = _flat_tensors(_InertUnpickler(archive.read(pkl[0]), path).load())
    tensors: dict[str, TensorInfo] = {}
    starts: dict[str, int] = {}
    for name, ref in refs.items():
        entry = f"{root}data/{ref.storage.key}"
        info = infos.get(entry)
        if info is None:
            raise CheckpointFormatError(f"{path}: storage {entry} of {name} missing")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointFormatError(f"{path}: storage {entry} is compressed")
        if entry not in starts:
            f.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(read(f, _LOCAL_HEADER.size, "zip local header"))
            starts[entry] = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
        numel = 1
        for s in ref.size:
            numel *= s
        if ref.stride != _contiguous_stride(ref.size) and numel > 1:
            raise CheckpointFormatError(f"{path}: tensor {name} is not contiguous")
        item = ITEMSIZE[ref.storage.dtype]
        start = starts[entry] + ref.offset * item
        tensors[name] = TensorInfo(ref.storage.dtype, ref.size, start, start + numel * item)
    return TensorTable(path, 0, tensors, {"format": "torch-zip"})


def _contiguous_stride(size: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for s in reversed(size):
        stride.append(acc)
        acc *= s
    return tuple(reversed(stride))


class _CountingFile(io.RawIOBase):
    """Lets zipfile seek/read through the reader's byte counting."""

    def __init__(self, f: BinaryIO, read) -> None:
        self._f, self._read = f, read

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            pos = self._f.tell()
            end = self._f.seek(0, 2)
            self._f.seek(pos)
            n = end - pos
        pos = self._f.tell()
        end = self._f.seek(0, 2)
        self._f.seek(pos)
        return self._read(self._f, min(n, end - pos), "zip directory")
