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

from encoders.weights.tensors import (
    ITEMSIZE,
    CheckpointFormatError,
    TensorInfo,
    TensorTable,
    is_count,
    numel,
)

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
# data.pkl of a 70B shard is ~100 KB; refuse to decompress or unpickle anything near this.
MAX_PICKLE_BYTES = 64 * 1024 * 1024
# A state dict nests a level or two ({"model": {...}}); deeper is not a checkpoint.
MAX_NESTING = 8
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


def _rebuild_tensor(storage, offset, size, stride, requires_grad, backward_hooks,
                    metadata=None) -> _TensorRef:
    """torch._utils._rebuild_tensor_v2's signature, so a record torch refuses is refused."""
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks) -> _TensorRef:
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
            raise CheckpointFormatError(f"{self.path}: unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, count = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{self.path}: unsupported storage {storage_type!r:.80}")
        return _Storage(storage_type.dtype, key, count)  # types checked by _check_ref


def _flat_tensors(obj, path: str, prefix: str = "", depth: int = 0,
                  seen: set[int] | None = None) -> dict[str, _TensorRef]:
    """A state dict, possibly nested (Meta's checkpoints are flat; some wrap in 'model').
    Entries that are neither tensors nor dicts (an epoch number, optimizer settings) are
    skipped. Nesting is bounded, and a dict reached twice is refused: a pickle's memo can
    share one dict under many keys at every level, which would make this walk exponential
    (a state dict never shares its sub-dicts)."""
    if depth > MAX_NESTING:
        raise CheckpointFormatError(f"{path}: data.pkl nests dicts deeper than {MAX_NESTING}")
    seen = set() if seen is None else seen
    out: dict[str, _TensorRef] = {}
    if isinstance(obj, dict):
        if id(obj) in seen:
            raise CheckpointFormatError(f"{path}: data.pkl shares one dict under two keys "
                                        f"(at {prefix.rstrip('.')!r})")
        seen.add(id(obj))
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointFormatError(f"{path}: data.pkl has a non-string key {k!r:.80}")
            name = f"{prefix}{k}"
            if isinstance(v, _TensorRef):
                out[name] = v
            elif isinstance(v, dict):
                out.update(_flat_tensors(v, path, f"{name}.", depth + 1, seen))
    return out


def _load_pickle(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> object:
    """Unpickle data.pkl with the inert unpickler; any malformation is a CheckpointFormatError
    (a pickle can fail in many ways: bad opcodes, a REDUCE on a storage class, wrong argument
    counts, truncation; all of them mean the same thing here)."""
    if info.file_size > MAX_PICKLE_BYTES:
        raise CheckpointFormatError(f"{path}: data.pkl is {info.file_size} bytes; not a state dict")
    try:
        return _InertUnpickler(archive.read(info), path).load()
    except CheckpointFormatError:
        raise
    except Exception as e:  # noqa: BLE001  (see the docstring)
        raise CheckpointFormatError(
            f"{path}: corrupt data.pkl ({type(e).__name__}: {str(e)[:200]})") from None


def _check_ref(ref: _TensorRef, name: str, path: str) -> None:
    """Every field a tensor's byte range is computed from, typed and in range (a BUILD opcode
    can overwrite fields after the rebuild function ran, so this runs on the loaded object)."""
    storage = ref.storage
    ok = (isinstance(storage, _Storage) and isinstance(storage.dtype, str)
          and storage.dtype in ITEMSIZE and isinstance(storage.key, str)
          and is_count(storage.numel) and is_count(ref.offset)
          and isinstance(ref.size, tuple) and all(is_count(d) for d in ref.size)
          and isinstance(ref.stride, tuple) and len(ref.stride) == len(ref.size)
          and all(is_count(d) for d in ref.stride))
    if not ok:
        raise CheckpointFormatError(f"{path}: tensor {name!r}: malformed tensor record in data.pkl")
    if numel(ref.size) > 1 and any(s != e for s, e, d in zip(
            ref.stride, _contiguous_stride(ref.size), ref.size, strict=True) if d != 1):
        raise CheckpointFormatError(f"{path}: tensor {name!r} is not contiguous")
    if ref.offset + numel(ref.size) > storage.numel:
        raise CheckpointFormatError(
            f"{path}: tensor {name!r}: elements {ref.offset}..{ref.offset + numel(ref.size)} "
            f"lie outside its storage of {storage.numel}")


def parse_torch_zip(f: BinaryIO, path: str, read) -> TensorTable:
    """``read(f, n, what)`` reads exactly n bytes at the current position (and counts them)."""
    try:
        file_size = f.seek(0, 2)
        archive = zipfile.ZipFile(_CountingFile(f, read))
        infos = {i.filename: i for i in archive.infolist()}
    except CheckpointFormatError:
        raise
    except Exception as e:  # noqa: BLE001  (zipfile raises many types on a corrupt directory)
        raise CheckpointFormatError(
            f"{path}: not a torch.save zip archive ({type(e).__name__}: {str(e)[:200]}); "
            "legacy non-zip pickles are refused") from None
    pkl = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise CheckpointFormatError(f"{path}: no data.pkl in the archive")
    root = pkl[0][: -len("data.pkl")]
    refs = _flat_tensors(_load_pickle(archive, infos[pkl[0]], path), path)
    tensors: dict[str, TensorInfo] = {}
    starts: dict[str, int] = {}
    for name, ref in refs.items():
        _check_ref(ref, name, path)
        entry = f"{root}data/{ref.storage.key}"
        info = infos.get(entry)
        if info is None:
            raise CheckpointFormatError(f"{path}: storage {entry} of {name} missing")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointFormatError(f"{path}: storage {entry} is compressed")
        item = ITEMSIZE[ref.storage.dtype]
        if info.file_size != ref.storage.numel * item:
            raise CheckpointFormatError(
                f"{path}: tensor {name!r}: storage {entry} holds {info.file_size} bytes, its "
                f"record says {ref.storage.numel} x {item}")
        if entry not in starts:
            starts[entry] = _data_start(f, info, entry, path, file_size, read)
        start = starts[entry] + ref.offset * item
        tensors[name] = TensorInfo(ref.storage.dtype, ref.size, start,
                                   start + numel(ref.size) * item)
    return TensorTable(path, 0, tensors, {"format": "torch-zip"})


def _data_start(f: BinaryIO, info: zipfile.ZipInfo, entry: str, path: str, file_size: int,
                read) -> int:
    """Where an entry's bytes start: after its local header, which must be one, and name the
    entry the directory says; the bytes must end inside the file."""
    if info.header_offset + _LOCAL_HEADER.size > file_size:
        raise CheckpointFormatError(f"{path}: storage {entry}: local header outside the file")
    f.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(read(f, _LOCAL_HEADER.size, "zip local header"))
    if fields[0] != b"PK\x03\x04":
        raise CheckpointFormatError(f"{path}: storage {entry}: bad zip local header")
    start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    if start + info.file_size > file_size:
        raise CheckpointFormatError(
            f"{path}: truncated file: storage {entry} ends at {start + info.file_size}, file "
            f"has {file_size}")
    return start


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
