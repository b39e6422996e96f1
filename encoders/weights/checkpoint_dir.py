"""A checkpoint folder wherever it is, and its files opened for byte-range reads.

``location`` is a local folder or any fsspec URL (``s3://``, ``gs://``, ``https://``,
``hf://``). Remote files are opened with no read-ahead cache, so every read is one exact
byte-range request: only a layer's bytes cross the network, never whole shards. Which
folder holds which family/size is ``encoders.lm.lookup``'s business, not this module's.
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
from huggingface_hub import constants


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
