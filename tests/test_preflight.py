"""Pre-flight of the weights, before Ray starts: every architectural number of a checkpoint's
config against the registry (for every caller of the block factory, not only the CLI), and
the headers, never the data, of the files holding each planned layer."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import ray
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config

from encoders.lm import registry
from encoders.lm.controls import build_block
from encoders.lm.layer_loading import check_layers, load_layers
from encoders.lm.lookup import check_checkpoint, locate
from encoders.lm.registry import architecture_numbers, get_family, list_families
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError
from experiments.registry_checks import tiny_size
from orchestrator import cli, tuner
from orchestrator.plan import build_plan
from orchestrator.preflight import planned_weights, preflight_weights
from orchestrator.spec import SpecError, load_spec
from tests.test_meta_llama import PARAMS, save_meta_checkpoint


class Reached(Exception):
    """run_sweep was called: the pre-flight let the sweep through."""


@pytest.fixture(autouse=True)
def no_sweep_may_start(monkeypatch, tmp_path):
    def forbidden(*a, **k):
        raise Reached

    monkeypatch.setattr(tuner, "run_sweep", forbidden)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def opens(monkeypatch):
    """Every file any SafetensorsReader opens, in order."""
    paths: list[str] = []
    real_open = SafetensorsReader._open

    def spy(self, path):
        paths.append(str(path))
        return real_open(self, path)

    monkeypatch.setattr(SafetensorsReader, "_open", spy)
    return paths


@pytest.fixture
def opened(monkeypatch, opens):
    """``opens``, and reading any tensor's data fails the test."""

    def no_data(self, path, names):
        raise AssertionError(f"tensor data read from {path}")

    monkeypatch.setattr(SafetensorsReader, "read_tensors", no_data)
    return opens


def register_tiny(monkeypatch, family: str):
    """The registry's ``family`` with one more size, "tiny" (repo tiny/FAMILY), for this test."""
    fam = get_family(family)
    size = tiny_size(family)
    monkeypatch.setitem(registry._FAMILIES, family,
                        dataclasses.replace(fam, sizes={**fam.sizes, "tiny": size}))
    return get_family(family), size


def save_tiny(monkeypatch, root, family: str = "opt", shard: str | None = "20KB", **changes):
    """A tiny checkpoint of ``family`` in root/tiny/FAMILY, its config the registry's tiny size
    with ``changes`` (the tensors follow the changed config)."""
    fam, size = register_tiny(monkeypatch, family)
    config = fam.make_config(size)
    config.vocab_size = 64
    for name, value in changes.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    path = root / size.repo_id
    model = fam.model_class(config)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


def holding(path, index: int) -> set[str]:
    """The shard files holding layer ``index``'s tensors."""
    wm = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    return {str(path / f) for k, f in wm.items() if re.search(rf"\blayers\.{index}\.", k)}


def run_bad(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("lmblocks-sweep: error: ")
    assert not ray.is_initialized()
    return err


def sweep_argv(weights_dir, family: str = "opt", layers: str = "1") -> list[str]:
    return ["--family", family, "--sizes", "tiny", "--layers", *layers.split(), "--controls",
            "pretrained", "--seeds", "0", "--weights-dir", str(weights_dir), "--force"]


# -- item 4: every architectural number, for every caller ------------------------------------


@pytest.mark.parametrize("family", list_families())
def test_every_family_config_is_read_as_its_registry_numbers(family):
    """The one reader of the numbers, on every family's own config: the registry's sizes."""
    fam = get_family(family)
    for size in fam.sizes.values():
        config = fam.make_config(size)
        heads, kv = size.num_heads, size.extra.get("num_key_value_heads", size.num_heads)
        assert architecture_numbers(config) == {
            "hidden size": size.hidden_size, "layers": size.num_layers,
            "attention heads": heads, "key/value heads": kv,
            "head size": size.hidden_size // heads, "FFN width": size.ffn_dim}
        fam.check_config(size, config, "config.json")


def test_gpt2_without_n_inner_is_4x_hidden():
    """Published GPT-2 configs say ``n_inner: null``: 4 x hidden, the registry's 3072."""
    gpt2 = get_family("gpt2")
    gpt2.check_config(gpt2.size("124m"), GPT2Config(n_inner=None), "config.json")
    with pytest.raises(CheckpointFormatError, match=r"FFN width 3000 \(registry: 3072\)"):
        gpt2.check_config(gpt2.size("124m"), GPT2Config(n_inner=3000), "config.json")


MISMATCHES = [  # family, config change, the line's words
    ("llama", {"num_key_value_heads": 4}, "key/value heads 4 (registry: 2)"),
    ("qwen2", {"num_key_value_heads": 1}, "key/value heads 1 (registry: 2)"),
    ("opt", {"ffn_dim": 128}, "FFN width 128 (registry: 64)"),
    ("bert", {"intermediate_size": 96}, "FFN width 96 (registry: 64)"),
    ("gpt2", {"n_inner": None}, "FFN width 128 (registry: 64)"),
    ("opt", {"do_layer_norm_before": False}, "do_layer_norm_before False (registry: True)"),
    ("pythia", {"use_parallel_residual": False},
     "use_parallel_residual False (registry: True)"),
    ("mistral", {"head_dim": 16}, "head size 16 (registry: 8)"),
]


@pytest.mark.parametrize(("family", "change", "words"), MISMATCHES,
                         ids=[f"{f}-{next(iter(c))}" for f, c, _ in MISMATCHES])
def test_build_block_rejects_a_config_the_registry_does_not_describe(
        monkeypatch, tmp_path, opens, family, change, words):
    weights = tmp_path / "w"
    path = save_tiny(monkeypatch, weights, family, **change)
    kwargs = {"family": family, "size": "tiny", "layers": (1,), "control": "pretrained",
              "seed": 0, "visual_dim": 8, "weights_dir": weights}
    with pytest.raises(CheckpointFormatError) as e:
        build_block(**kwargs)
    line = str(e.value)
    assert len(line.splitlines()) == 1
    assert line.startswith(f"{path.resolve() / 'config.json'}: not the registry's {family}/tiny")
    assert words in line
    assert opens == [], "the config is checked before any weights file is opened"

    # the same checkpoint without the change builds: the field was the only difference
    save_tiny(monkeypatch, tmp_path / "ok", family)
    block, info = build_block(**{**kwargs, "weights_dir": tmp_path / "ok"})
    assert info.weights_source == "pretrained" and len(block.layers) == 1 and opens


def test_the_cli_exits_2_naming_the_field(monkeypatch, tmp_path, capsys):
    save_tiny(monkeypatch, tmp_path / "w", "opt", do_layer_norm_before=False, ffn_dim=96)
    capsys.readouterr()
    err = run_bad(capsys, *sweep_argv(tmp_path / "w"))
    assert "config.json: not the registry's opt/tiny: FFN width 96 (registry: 64), " \
           "do_layer_norm_before False (registry: True)" in err


def test_meta_params_json_against_the_registry(tmp_path):
    """Meta's layout: the config is params.json, checked the same way."""
    folder = tmp_path / "w" / "huggyllama" / "llama-7b"
    folder.mkdir(parents=True)
    params = {"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-6,
              "vocab_size": -1}
    (folder / "params.json").write_text(json.dumps(params))
    assert check_checkpoint("llama", "1-7b", tmp_path / "w") == "huggyllama/llama-7b@weights-dir"
    (folder / "params.json").write_text(json.dumps({**params, "n_kv_heads": 8}))
    with pytest.raises(CheckpointFormatError,
                       match=r"params\.json: not the registry's llama/1-7b: "
                             r"key/value heads 8 \(registry: 32\)$"):
        check_checkpoint("llama", "1-7b", tmp_path / "w")
    (folder / "params.json").write_text("{}")
    with pytest.raises(CheckpointFormatError, match=rf"^{re.escape(str(folder))}/params\.json: "):
        check_checkpoint("llama", "1-7b", tmp_path / "w")


# -- item 5: the planned layers' headers, not their data --------------------------------------


def test_headers_only_each_once_and_only_the_planned_layers_files(monkeypatch, tmp_path):
    path = save_tiny(monkeypatch, tmp_path / "w")
    fam, size = get_family("opt"), get_family("opt").size("tiny")
    ckpt = locate(fam, size, tmp_path / "w")
    reader = SafetensorsReader(ckpt.open)
    check_layers(fam, ckpt, [1, 2], reader=reader, size=size)
    assert sorted(reader.files_opened) == sorted(holding(path, 1) | holding(path, 2))
    assert len(reader.files_opened) < len(set(json.loads(
        (path / "model.safetensors.index.json").read_text())["weight_map"].values()))
    headers = [reader.read_header(f) for f in reader.files_opened]  # cached: nothing read
    assert reader.bytes_read == sum(h.header_bytes for h in headers)
    loaded = load_layers(fam, ckpt, [1, 2], reader=SafetensorsReader(ckpt.open))
    assert loaded.bytes_read > reader.bytes_read + loaded.tensor_bytes // 2


def test_the_cli_preflight_reads_headers_once_and_no_data(monkeypatch, tmp_path, opened):
    path = save_tiny(monkeypatch, tmp_path / "w")
    argv = sweep_argv(tmp_path / "w", layers="1 2")
    argv[argv.index("--seeds") + 1] = "0,1"  # 4 trials share the files
    argv[argv.index("--controls") + 1] = "pretrained,random"
    with pytest.raises(Reached):
        cli.main(argv)
    assert len(opened) == len(set(opened)), "each header is read once"
    assert set(opened) == holding(path, 1) | holding(path, 2)
    assert not ray.is_initialized()


def rewrite(shard, change) -> None:
    state = load_file(str(shard))
    change(state)
    save_file(state, str(shard), metadata={"format": "pt"})


def _wrong_shape(path):
    shard = next(f for f in holding(path, 1) if "decoder.layers.1.fc1.weight" in load_file(f))
    rewrite(shard, lambda s: s.update({"decoder.layers.1.fc1.weight": torch.zeros(64, 16)}))
    return "layer 1 tensor fc1.weight has shape (64, 16), config expects (64, 32)"


def _lacking_tensor_listed_in_the_index(path):
    shard = next(f for f in holding(path, 1) if "decoder.layers.1.fc2.bias" in load_file(f))
    rewrite(shard, lambda s: s.pop("decoder.layers.1.fc2.bias"))
    return f"{shard}: missing tensor(s) ['decoder.layers.1.fc2.bias']"


def _lacking_tensor_everywhere(path):
    _lacking_tensor_listed_in_the_index(path)
    index = path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"]["decoder.layers.1.fc2.bias"]
    index.write_text(json.dumps(data))
    return "layer 1 does not match OPTDecoderLayer: missing ['fc2.bias'], unexpected []"


def _garbage_header(path):
    shard = max(holding(path, 1))
    with open(shard, "r+b") as f:
        f.write(b"\xff" * 64)
    return f"{shard}: "


def _missing_shard(path):
    shard = min(holding(path, 1))
    (path / shard).unlink()
    return f"{shard}: listed in the shard index but missing"


def _bad_index(path):
    (path / "model.safetensors.index.json").write_text('{"weight_map": [1, 2]}')
    return "model.safetensors.index.json: not a shard index"


BROKEN = [_wrong_shape, _lacking_tensor_listed_in_the_index, _lacking_tensor_everywhere,
          _garbage_header, _missing_shard, _bad_index]


@pytest.mark.parametrize("breaks", BROKEN, ids=[b.__name__.strip("_") for b in BROKEN])
def test_a_broken_planned_layer_exits_2_before_ray(monkeypatch, tmp_path, capsys, breaks):
    path = save_tiny(monkeypatch, tmp_path / "w")
    capsys.readouterr()
    words = breaks(path)
    assert words in run_bad(capsys, *sweep_argv(tmp_path / "w"))


def test_only_the_planned_layers_files_are_read(monkeypatch, tmp_path, opened):
    """Layer 0 is garbage in files that hold nothing of layer 1: a sweep of layer 1 passes,
    and never opens them; a sweep of layer 0 does not."""
    path = save_tiny(monkeypatch, tmp_path / "w")
    only_0 = holding(path, 0) - holding(path, 1)
    assert only_0, "fixture: layer 0 must have a file of its own"
    for f in only_0:
        with open(f, "wb") as fh:
            fh.write(b"not a safetensors file")
    with pytest.raises(Reached):
        cli.main(sweep_argv(tmp_path / "w", layers="1"))
    assert opened and not set(opened) & only_0
    with pytest.raises(SpecError, match="safetensors|truncated"):
        preflight_weights(build_plan(load_spec("default").replace(
            families=("opt",), sizes=("tiny",), layers=("0",), controls=("pretrained",))),
            str(tmp_path / "w"))


def test_meta_layout_headers_only(monkeypatch, tmp_path):
    """Meta's consolidated.NN.pth: the slices' shapes from each file's header, summed."""
    from transformers import LlamaModel

    from encoders.lm.meta_llama import meta_config

    fam, size = register_tiny(monkeypatch, "llama")
    config = meta_config(PARAMS)
    config.vocab_size = 64
    folder = tmp_path / "w" / size.repo_id
    save_meta_checkpoint(folder, LlamaModel(config), 2)
    ckpt = locate(fam, size, tmp_path / "w")
    reader = SafetensorsReader(ckpt.open)
    check_layers(fam, ckpt, [1], final_norm=True, reader=reader, size=size)
    files = sorted(folder.glob("consolidated.*.pth"))
    assert sorted(reader.files_opened) == [str(f) for f in files]
    total = sum(f.stat().st_size for f in files)
    assert reader.bytes_read < 0.2 * total  # the zip directories and pickles, no data

    shard = folder / "consolidated.01.pth"
    state = torch.load(shard, weights_only=True)
    state["layers.1.attention.wq.weight"] = state["layers.1.attention.wq.weight"][:-1]
    torch.save(state, shard)
    with pytest.raises(CheckpointFormatError,
                       match=r"layer 1 tensor self_attn\.q_proj\.weight has shape \(31, 32\), "
                             r"config expects \(32, 32\)"):
        check_layers(fam, locate(fam, size, tmp_path / "w"), [1], size=size)


def test_the_default_sweeps_preflight(opened):
    """The embedded default: one header read, no data, every planned layer checked."""
    plan = build_plan(load_spec("default"))
    assert planned_weights(plan) == {("minilm", "l6"): ([0, 5], False)}
    preflight_weights(plan, None)
    assert len(opened) == 1 and opened[0].endswith("model.safetensors")
