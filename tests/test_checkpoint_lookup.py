"""Lookup order: --weights-dir, then the Hugging Face cache layout, then (offline) a clear error."""

from __future__ import annotations

import shutil

import pytest

from encoders.lm.layer_loading import load_layers
from encoders.lm.lookup import WeightsNotFoundError, locate
from encoders.lm.registry import get_family
from encoders.weights.checkpoint_dir import hub_reachable
from tests.conftest import save_tiny_opt

OPT = get_family("opt")


def fake_hf_cache(cache_root, repo_id: str, source_dir, revision: str = "0123abcd" * 5):
    """The hub cache layout huggingface_hub writes: models--org--name/snapshots/REV/..."""
    repo_dir = cache_root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    shutil.copytree(source_dir, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.file_download.HF_HUB_CACHE", str(cache), raising=False)
    hub_reachable.cache_clear()
    yield cache
    hub_reachable.cache_clear()


def test_found_in_hf_cache_with_its_revision(tmp_path, offline_cache):
    _, src = save_tiny_opt(tmp_path / "src", shard="20KB")
    snapshot = fake_hf_cache(offline_cache, "facebook/opt-125m", src.path)
    ckpt = locate(OPT, OPT.size("125m"), None)
    assert ckpt.source == "hf-cache" and ckpt.path == snapshot
    assert ckpt.identity == f"facebook/opt-125m@{snapshot.name}"
    loaded = load_layers(OPT, ckpt, [1])
    assert loaded.files_opened and all(str(snapshot) in f for f in loaded.files_opened)


def test_weights_dir_comes_before_the_cache(tmp_path, offline_cache):
    _, src = save_tiny_opt(tmp_path / "src", shard=None)
    fake_hf_cache(offline_cache, "facebook/opt-125m", src.path)
    save_tiny_opt(tmp_path / "w" / "opt-125m", shard=None)
    ckpt = locate(OPT, OPT.size("125m"), tmp_path / "w")
    assert ckpt.source == "weights-dir" and ckpt.path == (tmp_path / "w" / "opt-125m").resolve()


def test_offline_and_not_cached_names_the_repo(tmp_path, offline_cache):
    with pytest.raises(WeightsNotFoundError, match=r"facebook/opt-1\.3b.*--weights-dir"):
        locate(OPT, OPT.size("1.3b"), tmp_path)
