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
import stat
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import fsspec
from huggingface_hub import constants

from encoders.weights.tensors import CheckpointFormatError


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def confine(name: str, where: str) -> None:
    """``name`` is a relative path inside a checkpoint: not empty, not absolute, no URL, no
    ``..`` part, no backslash or NUL (raise CheckpointFormatError naming ``where``)."""
    parts = name.split("/")
    bad = (not name or name.startswith("/") or "\\" in name or "\0" in name or "://" in name
           or (len(name) > 1 and name[1] == ":") or any(p in ("", ".", "..") for p in parts))
    if bad:
        raise CheckpointFormatError(
            f"{where}: file name {name!r} is not a plain path inside the checkpoint; valid: a "
            "relative name without '..' (e.g. model-00001-of-00002.safetensors)")


# config.json and shard indexes are kilobytes; refuse to read a "metadata" file beyond this.
MAX_METADATA_BYTES = 64 * 1024 * 1024


def _check_regular(path: str, max_bytes: int | None) -> None:
    """A local checkpoint file must be a regular file (a FIFO or a device would block or
    never end) and, for metadata, small."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointFormatError(f"{path}: not a regular file; valid: a checkpoint file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise CheckpointFormatError(
            f"{path}: {st.st_size} bytes is too large for a config or shard index "
            f"(limit {max_bytes})")


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

    def resolve(self, name: str, named_by: str | None = None) -> str:
        """Where file ``name`` is read from: the local copy, else the fallback URL.

        A name comes from untrusted input (a shard index from the hub or a shared bucket):
        it must stay inside the checkpoint, checked before anything is opened. ``named_by``
        is the file that named it, for the error."""
        base = str(self.location).rstrip("/")
        confine(name, f"{base}/{named_by}" if named_by else base)
        here = f"{base}/{name}"
        if not is_url(base):
            if os.path.lexists(here):
                self._inside(here, name, named_by)
            elif self.fallback:
                return f"{self.fallback.rstrip('/')}/{name}"
        return here

    def _inside(self, here: str, name: str, named_by: str | None) -> None:
        """A local file (symlinks followed) must lie inside the checkpoint folder, or, for a
        Hugging Face cache snapshot (whose files link to ``../../blobs/``), inside its repo's
        cache folder."""
        root = Path(os.path.realpath(str(self.location)))
        if self.source == "hf-cache":
            root = root.parents[1]
        real = Path(os.path.realpath(here))
        if not real.is_relative_to(root):
            by = f" (named by {named_by})" if named_by else ""
            raise CheckpointFormatError(
                f"{here}: {name!r}{by} leads outside the checkpoint folder {root}; valid: "
                "files inside it")

    def _fs_for(self, location: str) -> tuple[fsspec.AbstractFileSystem, str]:
        return fsspec.core.url_to_fs(location)

    def _text(self, name: str) -> str | None:
        if name not in self._texts:
            location = self.resolve(name)
            fs, path = self._fs_for(location)
            try:
                if not is_url(location) and os.path.exists(path) and not os.path.isdir(path):
                    _check_regular(path, MAX_METADATA_BYTES)
                data = fs.cat_file(path)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                self._texts[name] = None
                return None
            try:
                self._texts[name] = data.decode()
            except UnicodeDecodeError as e:
                raise CheckpointFormatError(f"{location}: not UTF-8 text ({e})") from None
        return self._texts[name]

    def exists(self, name: str) -> bool:
        """For small metadata files only (config, index): fetched once, then kept."""
        return self._text(name) is not None

    def has_file(self, name: str) -> bool:
        """For any file: asks the filesystem (a HEAD request for HTTP), reads nothing."""
        fs, path = self._fs_for(self.resolve(name))
        try:
            return fs.info(path).get("type", "file") == "file"
        except (FileNotFoundError, NotADirectoryError):
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
        if os.path.exists(path):
            _check_regular(path, None)
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
