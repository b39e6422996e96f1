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
