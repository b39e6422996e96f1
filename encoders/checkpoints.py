"""Find a family/size's checkpoint: --weights-dir, then the Hugging Face cache, then the hub.

Only the files a layer needs are ever fetched: ``locate`` resolves ``config.json`` (a few
KB), and ``CheckpointDir.file`` fetches a shard or index file on first use, so a layer
read from a hub checkpoint downloads only the shard(s) that hold that layer.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

from encoders.registry import LMFamily, LMSize


class WeightsNotFoundError(FileNotFoundError):
    """No local copy of a checkpoint and no way to download it; the message says what to do."""


@dataclass(frozen=True)
class CheckpointDir:
    """A checkpoint in Hugging Face layout, and where it came from (recorded on every run)."""

    path: Path
    source: str  # "weights-dir" | "package" | "hf-cache" | "hub"
    repo_id: str
    revision: str | None = None  # hub commit of a cache snapshot

    def file(self, name: str) -> Path:
        """Path of one checkpoint file, downloading only that file for a hub checkpoint."""
        local = self.path / name
        if local.exists() or self.source not in ("hf-cache", "hub"):
            return local
        if not hub_reachable():
            raise WeightsNotFoundError(
                f"{local}: not in the Hugging Face cache and the hub is unreachable; "
                f"download {self.repo_id} where you are online or pass --weights-dir"
            )
        return Path(hf_hub_download(self.repo_id, name, revision=self.revision))

    @property
    def identity(self) -> str:
        return f"{self.repo_id}@{self.revision or self.source}"


def weights_dir_candidates(weights_dir: Path, size: LMSize) -> list[Path]:
    """``DIR/facebook/opt-125m``, ``DIR/opt-125m`` and ``DIR`` itself, in that order."""
    return [weights_dir / size.repo_id, weights_dir / size.repo_id.split("/")[-1], weights_dir]


def locate(family: LMFamily, size: LMSize, weights_dir: str | Path | None = None) -> CheckpointDir:
    if weights_dir is not None:
        root = Path(weights_dir)
        for cand in weights_dir_candidates(root, size):
            found = (cand / "config.json").is_file()
            if found and (cand != root or _config_matches(cand, size)):
                return CheckpointDir(cand.resolve(), "weights-dir", size.repo_id)
    if family.locate is not None:
        return CheckpointDir(Path(family.locate(size)), "package", size.repo_id)
    cached = try_to_load_from_cache(size.repo_id, "config.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        return CheckpointDir(snapshot, "hf-cache", size.repo_id, revision=snapshot.name)
    if hub_reachable():
        config = Path(hf_hub_download(size.repo_id, "config.json"))
        return CheckpointDir(config.parent, "hub", size.repo_id, revision=config.parent.name)
    where = f"--weights-dir {weights_dir}, " if weights_dir else ""
    raise WeightsNotFoundError(
        f"weights for {size.repo_id} not found ({where}Hugging Face cache {constants.HF_HUB_CACHE}) "
        f"and the hub is unreachable: put the checkpoint in DIR/{size.repo_id} "
        f"(config.json + *.safetensors) and pass --weights-dir DIR, or run "
        f"`hf download {size.repo_id}` on a machine that is online"
    )


def _config_matches(path: Path, size: LMSize) -> bool:
    """``DIR`` itself is only taken when its config.json is this size (not a sibling size)."""
    import json

    cfg = json.loads((path / "config.json").read_text())
    return cfg.get("hidden_size") == size.hidden_size and cfg.get("num_hidden_layers") == (
        size.num_layers
    )


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
