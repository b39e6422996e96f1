"""A checkpoint cannot steer reads outside its folder: shard names from an index (untrusted
input from the hub or a shared bucket) are checked before anything is opened, and a symlink
leading out of the folder is refused (issue 14, item 1)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from encoders.lm.layer_loading import load_layers
from encoders.lm.registry import get_family
from encoders.weights.checkpoint_dir import CheckpointDir, confine
from encoders.weights.tensors import CheckpointFormatError
from tests.conftest import save_tiny_opt

OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # records every file this process opens (hooks cannot be removed)

INDEX = "model.safetensors.index.json"


def crafted(tmp_path: Path, entry: str) -> tuple[CheckpointDir, Path]:
    """A tiny sharded OPT whose index sends one tensor's shard to ``entry``; a file holding a
    copy of a real shard waits outside the folder, where ``../elsewhere/`` points."""
    folder = tmp_path / "ckpt"
    _, ckpt = save_tiny_opt(folder)
    index = json.loads((folder / INDEX).read_text())
    shard = next(iter(index["weight_map"].values()))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.safetensors").write_bytes((folder / shard).read_bytes())
    layer_key = next(k for k in index["weight_map"] if ".layers.2." in k)
    index["weight_map"][layer_key] = entry
    (folder / INDEX).write_text(json.dumps(index))
    return ckpt, folder


@pytest.mark.parametrize("entry", ["../elsewhere/x.safetensors", "../../../../etc/passwd",
                                   "/etc/passwd", "sub/../../elsewhere/x.safetensors",
                                   "C:\\\\weights\\\\x.safetensors", "file:///etc/passwd", ""])
def test_index_entries_outside_the_folder_are_refused_before_any_open(tmp_path, entry):
    ckpt, folder = crafted(tmp_path, entry)
    OPENED.clear()
    with pytest.raises(CheckpointFormatError) as err:
        load_layers(get_family("opt"), ckpt, [2])
    message = str(err.value)
    assert INDEX in message and repr(entry) in message and "\n" not in message
    outside = [p for p in OPENED if not Path(p).resolve().is_relative_to(folder.resolve())
               and ("elsewhere" in p or p.startswith("/etc"))]
    assert outside == []  # nothing outside the checkpoint was opened, not even its first bytes


def test_a_symlink_leading_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    _, ckpt = save_tiny_opt(folder)
    index = json.loads((folder / INDEX).read_text())
    shard = index["weight_map"][next(k for k in index["weight_map"] if ".layers.2." in k)]
    (tmp_path / "elsewhere").mkdir()
    real = tmp_path / "elsewhere" / "x.safetensors"
    real.write_bytes((folder / shard).read_bytes())
    (folder / shard).unlink()
    (folder / shard).symlink_to(real)  # a plain name, but the file is elsewhere
    OPENED.clear()
    with pytest.raises(CheckpointFormatError, match="leads outside the checkpoint folder"):
        load_layers(get_family("opt"), ckpt, [2])
    assert not any("elsewhere" in p for p in OPENED)


def test_plain_names_and_remote_checkpoints():
    for good in ("model-00001-of-00002.safetensors", "shards/part-1.safetensors"):
        confine(good, "index")  # accepted
    remote = CheckpointDir("memory://bucket/ckpt", "weights-dir", "org/model")
    assert remote.resolve("model.safetensors") == "memory://bucket/ckpt/model.safetensors"
    with pytest.raises(CheckpointFormatError, match=r"memory://bucket/ckpt/index.json: file "
                                                    r"name '\.\./other/x' is not a plain path"):
        remote.resolve("../other/x", named_by="index.json")


def test_a_hugging_face_cache_snapshot_may_link_into_its_blobs(tmp_path):
    """The hub cache's own layout: snapshots/<rev>/<file> -> ../../blobs/<hash>. Inside the
    repo's cache folder: allowed; a link out of it: refused."""
    repo = tmp_path / "models--org--model"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_bytes(b"weights")
    snapshot = repo / "snapshots" / "rev1"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to("../../blobs/abc123")
    (tmp_path / "outside").write_bytes(b"secret")
    (snapshot / "evil.safetensors").symlink_to(tmp_path / "outside")
    cached = CheckpointDir(snapshot, "hf-cache", "org/model", "rev1")
    assert cached.resolve("model.safetensors") == f"{snapshot}/model.safetensors"
    with pytest.raises(CheckpointFormatError, match="leads outside the checkpoint folder"):
        cached.resolve("evil.safetensors")
