"""Layer-only reading from remote checkpoints: over HTTP, bytes within 2% of the layer's."""

from __future__ import annotations

import json

import pytest
import torch

from encoders.lm.layer_loading import load_layers
from encoders.lm.lookup import locate
from encoders.lm.registry import get_family
from encoders.weights.checkpoint_dir import CheckpointDir
from tests.conftest import save_tiny_opt, weight_map
from tests.http_range_server import RangeServer, file_sizes

OPT = get_family("opt")


def header_bytes(path, names) -> int:
    import struct

    total = 0
    for name in names:
        with open(path / name, "rb") as f:
            total += 8 + struct.unpack("<Q", f.read(8))[0]
    return total


@pytest.fixture
def served(tmp_path):
    torch.manual_seed(0)
    model, ckpt = save_tiny_opt(tmp_path / "ckpt", shard="40KB", post_ln=False)
    with RangeServer(tmp_path / "ckpt") as server:
        yield model, ckpt, server


def test_http_layer_only_bytes_within_2_percent(served):
    model, local, server = served
    remote = CheckpointDir(server.url, "weights-dir", "tiny/opt")
    server.reset()
    loaded = load_layers(OPT, remote, [2])
    wm = weight_map(local.path)
    shards = sorted({f for k, f in wm.items() if ".layers.2." in k})
    layer_bytes = loaded.tensor_bytes
    small_files = sum((local.path / n).stat().st_size for n in ("config.json",
                      "model.safetensors.index.json"))
    budget = 1.02 * (layer_bytes + header_bytes(local.path, shards)) + small_files
    assert server.bytes_served <= budget, (server.bytes_served, budget)
    assert server.bytes_served < file_sizes(local.path) / 2
    ref = model.model.decoder.layers[2].state_dict()
    for k, v in loaded.layers[0].state_dict().items():
        torch.testing.assert_close(v, ref[k])
    got = {p for m, p, r in server.requests if m == "GET" and p.endswith(".safetensors")}
    assert got == {f"/{s}" for s in shards}


def test_layer_straddling_two_shards(tmp_path):
    _, ckpt = save_tiny_opt(tmp_path / "ckpt", shard="20KB")
    wm = weight_map(ckpt.path)
    straddlers = [i for i in range(4)
                  if len({f for k, f in wm.items() if f".layers.{i}." in k}) >= 2]
    assert straddlers, "fixture must put some layer across two shards"
    i = straddlers[0]
    with RangeServer(ckpt.path) as server:
        loaded = load_layers(OPT, CheckpointDir(server.url, "weights-dir", "t"), [i])
        shards = {f for k, f in wm.items() if f".layers.{i}." in k}
        budget = 1.02 * (loaded.tensor_bytes + header_bytes(ckpt.path, shards)) + sum(
            (ckpt.path / n).stat().st_size for n in ("config.json", "model.safetensors.index.json")
        )
        assert server.bytes_served <= budget


def test_weights_dir_as_url_and_missing_remote(served, tmp_path):
    _, _, server = served
    size = OPT.size("125m")
    # a URL --weights-dir holding no such checkpoint is not found (and says so)
    from encoders.lm.lookup import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="facebook/opt-125m"):
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from encoders.weights.checkpoint_dir import hub_reachable

            hub_reachable.cache_clear()
            locate(OPT, size, server.url + "/nowhere")
        finally:
            del os.environ["HF_HUB_OFFLINE"]
            hub_reachable.cache_clear()
    assert json.loads(CheckpointDir(server.url, "weights-dir", "x").read_text("config.json"))[
        "hidden_size"] == 32


def test_layer_cache_second_read_fetches_only_headers(served, tmp_path):
    from encoders.weights.layer_cache import LayerCache

    _, local, server = served
    remote = CheckpointDir(server.url, "weights-dir", "tiny/opt")
    cache = LayerCache(tmp_path / "cache")
    first = load_layers(OPT, remote, [1], cache=cache)
    cold = server.bytes_served
    server.reset()
    second = load_layers(OPT, remote, [1], cache=cache)
    assert not first.cache_hit and second.cache_hit
    assert first.sha256 == second.sha256
    assert server.bytes_served < 0.2 * cold  # index, config and headers only
    entries = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(entries) == 1
    # a corrupted entry is detected (its header no longer matches) and replaced
    entries[0].write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    third = load_layers(OPT, remote, [1], cache=cache)
    assert not third.cache_hit and third.sha256 == first.sha256
    # local sources are not copied into the cache
    load_layers(OPT, local, [0], cache=cache)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1


def _fill(args):
    url, cache_dir = args
    from encoders.weights.layer_cache import LayerCache

    loaded = load_layers(OPT, CheckpointDir(url, "weights-dir", "tiny/opt"), [3],
                         cache=LayerCache(cache_dir))
    return loaded.sha256


def test_concurrent_cache_fill_leaves_one_valid_entry(served, tmp_path):
    import multiprocessing as mp

    from encoders.weights.layer_cache import LayerCache

    _, _, server = served
    cache_dir = tmp_path / "cache"
    with mp.get_context("spawn").Pool(4) as pool:
        shas = pool.map(_fill, [(server.url, str(cache_dir))] * 4)
    assert len(set(shas)) == 1
    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no torn or temp files
    again = load_layers(OPT, CheckpointDir(server.url, "weights-dir", "tiny/opt"), [3],
                        cache=LayerCache(cache_dir))
    assert again.cache_hit and again.sha256 == shas[0]


def test_pytorch_bin_shards_over_http_layer_only(tmp_path):
    from tests.conftest import convert_to_bin_shards

    model, ckpt = save_tiny_opt(tmp_path / "ckpt", shard="40KB")
    convert_to_bin_shards(ckpt.path)
    wm = json.loads((ckpt.path / "pytorch_model.bin.index.json").read_text())["weight_map"]
    shards = {f for k, f in wm.items() if ".layers.2." in k}
    # everything in a shard that is not tensor data counts as its "header"
    all_tensor_bytes = sum(t.numel() * t.element_size()
                           for t in model.state_dict().values())
    total = sum((ckpt.path / f).stat().st_size for f in set(wm.values()))
    with RangeServer(ckpt.path) as server:
        loaded = load_layers(OPT, CheckpointDir(server.url, "weights-dir", "t"), [2])
        overhead = total - all_tensor_bytes
        small = sum((ckpt.path / n).stat().st_size for n in ("config.json",
                    "pytorch_model.bin.index.json"))
        assert server.bytes_served <= 1.02 * loaded.tensor_bytes + overhead + small
        assert server.bytes_served < total / 2
        got = {p for m, p, r in server.requests if m == "GET" and p.endswith(".bin")}
        assert got == {f"/{s}" for s in shards}
    ref = model.model.decoder.layers[2].state_dict()
    for k, v in loaded.layers[0].state_dict().items():
        torch.testing.assert_close(v, ref[k])


def test_bin_with_code_in_its_pickle_is_refused(tmp_path):
    import os
    import pickle
    import zipfile

    from encoders.weights.safetensors_reader import SafetensorsReader
    from encoders.weights.tensors import CheckpointFormatError

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.bin"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(CheckpointFormatError, match="refusing to unpickle"):
        SafetensorsReader().read_header(path)
    assert not (tmp_path / "pwned").exists()
