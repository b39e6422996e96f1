"""Shared test set-up: tiny Hugging Face checkpoints built with transformers' own classes in a temp
dir, and the xdist grouping of the tests that start Ray."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

import encoders.lm.families  # noqa: F401
from encoders.weights.checkpoint_dir import CheckpointDir

# The registry checks are plain asserts in a package module (plugin authors call them too):
# pytest explains their failures as it does the tests' own.
pytest.register_assert_rewrite("experiments.registry_checks")

# Each xdist worker computes with its share of the cores: with torch's default (every core a
# worker) two workers' OpenMP threads oversubscribe the machine and spin waiting for each
# other; one thread each ran the embedded tasks' training tests 14% faster on 2 cores
# (129 s -> 111 s for four of them side by side). Children (sweeps' drivers, plugin runs)
# inherit it through OMP_NUM_THREADS; a trial sets its own from the CPUs Ray gives it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    _THREADS = max(1, len(os.sched_getaffinity(0)) // _WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Memory ceiling, per-test peaks and the Ray-group check; xdist's scheduler mended after a crash.
pytest_plugins = ("tests.suite_guard", "tests.xdist_crash_safe")

# Slow tests in these modules start Ray (a local cluster, sweeps, killed drivers and workers):
# under pytest-xdist they share one worker, so two Ray clusters never compete for the two
# cores at once while the other worker runs everything else.
RAY_MODULES = {"test_sweep_e2e", "test_cluster_e2e", "test_failures", "test_cli", "test_recipe",
               "test_capacity_controls", "test_images", "test_pointcloud", "test_retrieval",
               "test_video", "test_vqa", "test_vqa3d", "test_preflight", "test_resources",
               "test_dry_run", "test_search", "test_objectives", "test_filtering_paper",
               "test_mlflow_server", "test_ray_start_cluster", "test_encoder_choice",
               "test_plugins", "test_positions_cli", "test_positions_sweep",
               "test_data_parallel_sweep",
               "test_suite_guard"}  # its runaway run starts a process named like Ray's raylet

# Ray runs its workers at nice 15 (Ray's ``worker_niceness``). Beside the other xdist worker's
# tests at nice 0 they got a few percent of a core: a new actor took ~95 s to start and
# import torch (5 s alone), the Ray tests ran ~1.6x slower in CI than here, and in CI a
# retried trial ended as "The actor died unexpectedly" instead of its own error (starvation
# may play a part; it still happened once with this setting: see test_failures). The tests run
# Ray's workers at the same priority as themselves; Ray's default stays for users.
os.environ.setdefault("RAY_worker_niceness", "0")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and item.module.__name__.split(".")[-1] in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))


def forget_plugins() -> None:
    """Every plugin this process loaded, gone: its registrations, its modules, the loader's
    record (``orchestrator/plugins.py`` keeps them for the process's life, as a sweep's driver
    needs). ``cli.main`` loads the installed plugins (the example's, in CI) on every call."""
    from encoders.lm import controls
    from encoders.lm import registry as families
    from experiments import registrations
    from experiments.tasks import catalog
    from experiments.tasks import registry as tasks
    from orchestrator import plugins

    for plugin in plugins._LOADED.values():
        for name in plugin.registered.tasks:
            tasks._TASKS.pop(name, None)
            if name not in catalog.BUILTIN_TASKS:
                catalog.CATALOG.pop(name, None)
        for name in plugin.registered.families:
            families._FAMILIES.pop(name, None)
        for name in plugin.registered.controls:
            controls._CONTROLS.pop(name, None)
        top = plugin.module.split(".")[0]
        if top not in ("encoders", "experiments", "orchestrator", "results", "tests"):
            for module in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[module]
        registrations._RECORDED.pop(plugin.module, None)
    plugins._LOADED.clear()
    plugins._ON_WORKER.clear()


@pytest.fixture(autouse=True)
def plugins_forgotten():
    """Each test starts with lmblocks' own registries, as a fresh process would."""
    yield
    if "orchestrator.plugins" in sys.modules:
        from orchestrator import plugins

        if plugins._LOADED:
            forget_plugins()


@pytest.fixture(autouse=True)
def no_tracking_uri_from_the_environment(monkeypatch):
    """Tests name their MLflow store; one set in the shell (MLFLOW_TRACKING_URI, which the
    commands honour) must not redirect them, nor reach the sweeps they start."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tiny_opt_config(*, post_ln: bool = False, layers: int = 4) -> OPTConfig:
    """A 4-layer OPT; ``post_ln`` mirrors opt-350m (post-LN, 32 <-> 16 projections)."""
    return OPTConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        ffn_dim=64,
        num_attention_heads=4,
        vocab_size=100,
        max_position_embeddings=64,
        word_embed_proj_dim=16 if post_ln else 32,
        do_layer_norm_before=not post_ln,
        dropout=0.5,  # large, so a block left in train mode would be visibly stochastic
        attention_dropout=0.5,
    )


def save_tiny_opt(
    path: Path, *, post_ln: bool = False, shard: str | None = "20KB", seed: int = 0
) -> tuple[OPTForCausalLM, CheckpointDir]:
    torch.manual_seed(seed)
    model = OPTForCausalLM(tiny_opt_config(post_ln=post_ln)).eval()
    if shard:
        model.save_pretrained(path, max_shard_size=shard)
    else:
        model.save_pretrained(path)
    return model, CheckpointDir(path, "weights-dir", f"tiny/opt-{'post' if post_ln else 'pre'}")


def weight_map(path: Path) -> dict[str, str]:
    return json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]


@pytest.fixture(params=[False, True], ids=["pre-ln", "post-ln-projected"])
def tiny_opt(request, tmp_path):
    model, ckpt = save_tiny_opt(tmp_path / "ckpt", post_ln=request.param)
    return model, ckpt


def convert_to_bin_shards(path: Path) -> None:
    """Rewrite a sharded safetensors checkpoint as PyTorch zip shards (.bin) + their index,
    as big hub checkpoints (facebook/opt-66b) are published."""
    from safetensors.torch import load_file

    index = json.loads((path / "model.safetensors.index.json").read_text())
    renamed = {}
    for shard in sorted(set(index["weight_map"].values())):
        bin_name = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(str(path / shard)), path / bin_name)
        (path / shard).unlink()
        renamed[shard] = bin_name
    weight_map = {k: renamed[v] for k, v in index["weight_map"].items()}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (path / "model.safetensors.index.json").unlink()


def assert_figure(path: Path, min_colours: int = 64) -> tuple[int, int]:
    """A PNG that decodes, at least 300 x 200 pixels, with drawn content: more than
    ``min_colours`` distinct colours (an empty or failed figure has a handful). What a file
    size cannot tell. Returns (width, height)."""
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG", path
        width, height = img.size
        colours = img.convert("RGB").getcolors(maxcolors=1 << 24)
    assert width >= 300 and height >= 200, (path.name, width, height)
    assert len(colours) > min_colours, (path.name, len(colours))
    return width, height
