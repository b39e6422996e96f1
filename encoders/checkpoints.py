"""Find a family/size's checkpoint, and open its files wherever they are.

Lookup order: ``--weights-dir`` (a local folder or any fsspec URL: ``s3://``, ``gs://``,
``https://``, ``hf://``), the family's own location (a package), the local Hugging Face
cache, then the hub through huggingface_hub's filesystem (``hf://``) when online. Remote
files are opened with no read-ahead cache, so every read is one exact byte-range request:
only a layer's bytes cross the network, never whole shards.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import fsspec
from huggingface_hub import constants, try_to_load_from_cache

from encoders.registry import LMFamily, LMSize


class WeightsNotFoundError(FileNotFoundError):
    """No copy of a checkpoint anywhere we may look; the message says what to do."""


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


@dataclass(frozen=True)
class CheckpointDir:
    """A checkpoint in Hugging Face layout, and where it came from (recorded on every run).

    ``location`` is a local folder or an fsspec URL; ``fallback`` is a URL for files that a
    partial local copy (a Hugging Face cache snapshot) lacks.
    """

    location: str | Path
    source: str  # "weights-dir" | "package" | "hf-cache" | "hub"
    repo_id: str
    revision: str | None = None  # hub commit of a cache snapshot
    fallback: str | None = None
    # small files (config, index) read once: name -> text, or None when absent
    _texts: dict[str, str | None] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    @property
    def path(self) -> Path:
        return Path(str(self.location))

    def resolve(self, name: str) -> str:
        """Where file ``name`` is read from: the local copy, else the fallback URL."""
        base = str(self.location).rstrip("/")
        here = f"{base}/{name}"
        if not is_url(base) and not os.path.exists(here) and self.fallback:
            return f"{self.fallback.rstrip('/')}/{name}"
        return here

    def _fs_for(self, location: str) -> tuple[fsspec.AbstractFileSystem, str]:
        return fsspec.core.url_to_fs(location)

    def _text(self, name: str) -> str | None:
        if name not in self._texts:
            fs, path = self._fs_for(self.resolve(name))
            try:
                self._texts[name] = fs.cat_file(path).decode()
            except (FileNotFoundError, IsADirectoryError):
                self._texts[name] = None
        return self._texts[name]

    def exists(self, name: str) -> bool:
        """For small metadata files only (config, index): fetched once, then kept."""
        return self._text(name) is not None

    def has_file(self, name: str) -> bool:
        """For any file: asks the filesystem (a HEAD request for HTTP), reads nothing."""
        fs, path = self._fs_for(self.resolve(name))
        try:
            return fs.info(path).get("type", "file") == "file"
        except FileNotFoundError:
            return False

    def read_text(self, name: str) -> str:
        text = self._text(name)
        if text is None:
            raise FileNotFoundError(self.resolve(name))
        return text

    def open(self, location: str) -> BinaryIO:
        """Open a resolved location for byte-range reads (no read-ahead for remote files)."""
        fs, path = self._fs_for(location)
        if is_url(location):
            return fs.open(path, "rb", cache_type="none", block_size=2**20)
        return open(path, "rb")

    def stamp(self, location: str) -> str:
        """A version stamp of one file: whatever its filesystem reports (for the layer cache)."""
        fs, path = self._fs_for(location)
        info = fs.info(path)
        keys = ("ETag", "etag", "mtime", "LastModified", "last_modified", "last_commit", "lfs")
        return json.dumps({k: str(info[k]) for k in keys if info.get(k)}, sort_keys=True)

    @property
    def identity(self) -> str:
        return f"{self.repo_id}@{self.revision or self.source}"


def weights_dir_candidates(weights_dir: str, size: LMSize) -> list[str]:
    """``DIR/facebook/opt-125m``, ``DIR/opt-125m`` and ``DIR`` itself, in that order."""
    base = str(weights_dir).rstrip("/")
    return [f"{base}/{size.repo_id}", f"{base}/{size.repo_id.split('/')[-1]}", base]


def locate(
    family: LMFamily, size: LMSize, weights_dir: str | Path | None = None
) -> CheckpointDir:
    if weights_dir is not None:
        root = str(weights_dir).rstrip("/")
        for cand in weights_dir_candidates(root, size):
            ckpt = CheckpointDir(cand if is_url(cand) else Path(cand).resolve(), "weights-dir",
                                 size.repo_id)
            found = ckpt.exists("config.json") or ckpt.exists("params.json")  # HF or Meta
            if found and (cand != root or _config_matches(ckpt, size)):
                return ckpt
    if family.locate is not None:
        return CheckpointDir(Path(family.locate(size)), "package", size.repo_id)
    cached = try_to_load_from_cache(size.repo_id, "config.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        fallback = f"hf://{size.repo_id}@{snapshot.name}" if hub_reachable() else None
        return CheckpointDir(snapshot, "hf-cache", size.repo_id, snapshot.name, fallback)
    if hub_reachable():
        return CheckpointDir(f"hf://{size.repo_id}", "hub", size.repo_id, "main")
    where = f"--weights-dir {weights_dir}, " if weights_dir else ""
    raise WeightsNotFoundError(
        f"weights for {size.repo_id} not found ({where}Hugging Face cache {constants.HF_HUB_CACHE}) "
        f"and the hub is unreachable: put the checkpoint in DIR/{size.repo_id} "
        f"(config.json + *.safetensors) and pass --weights-dir DIR, or run "
        f"`hf download {size.repo_id}` on a machine that is online"
    )


def _config_matches(ckpt: CheckpointDir, size: LMSize) -> bool:
    """``DIR`` itself is only taken when its config.json is this size (not a sibling size)."""
    name = "config.json" if ckpt.exists("config.json") else "params.json"
    cfg = json.loads(ckpt.read_text(name))
    hidden = cfg.get("hidden_size", cfg.get("n_embd", cfg.get("dim")))
    layers = cfg.get("num_hidden_layers", cfg.get("n_layer", cfg.get("n_layers")))
    return hidden == size.hidden_size and layers == size.num_layers


@cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick TCP probe instead of huggingface_hub's retries (~25 s per file offline)."""
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE"):
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
