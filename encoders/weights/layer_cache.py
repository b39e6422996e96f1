"""A local, content-addressed cache of single layers, shared by every trial on a machine.

A sweep runs many trials on the same layer (seeds, tasks, controls); each would otherwise
read the layer from its source again (over the network, for a remote checkpoint). The key
hashes what identifies the bytes: the checkpoint's location and revision, and for every
source file its size, its version stamp (mtime, ETag or LFS hash, whatever the filesystem
reports) and a digest of its safetensors header, plus the tensor names. A source that
changes gets a new key; an entry is re-verified against the source's header on every hit.

Entries are written to a temporary file in the cache folder and renamed into place
(``os.replace`` is atomic), so several trials filling the same entry at once leave one valid
file and no reader ever sees a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import TensorTable

ENV_VAR = "LMBLOCKS_LAYER_CACHE"


def default_cache_dir() -> Path:
    if env := os.environ.get(ENV_VAR):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "lmblocks" / "layers"


def header_digest(header: TensorTable) -> str:
    blob = json.dumps(
        {n: [t.dtype, t.shape, t.start, t.end] for n, t in sorted(header.tensors.items())}
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_key(
    location_id: str, headers: dict[str, TensorTable], stamps: dict[str, str],
    names: list[str],
) -> str:
    files = {
        loc: {"size_end": max((t.end for t in h.tensors.values()), default=0),
              "header": header_digest(h), "stamp": stamps.get(loc, "")}
        for loc, h in sorted(headers.items())
    }
    blob = json.dumps({"source": location_id, "files": files, "names": sorted(names)})
    return hashlib.sha256(blob.encode()).hexdigest()


class LayerCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str, expected: dict[str, tuple[str, tuple[int, ...]]]) -> dict | None:
        """The cached tensors, if present and shaped exactly as the source's header says."""
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        reader = SafetensorsReader()
        header = reader.read_header(path)
        got = {n: (t.dtype, t.shape) for n, t in header.tensors.items()}
        if got != expected or header.metadata.get("lmblocks.key") != key:
            path.unlink(missing_ok=True)  # stale or foreign: drop it, re-read the source
            self.misses += 1
            return None
        self.hits += 1
        return reader.read_tensors(path, list(expected))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                      metadata={"lmblocks.key": key})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path
