"""Your own encoder, images and weights without a fork (issue 29, levels 1 and 2): any timm
ViT-like model on an ImageFolder tree (``--tasks images --encoder NAME``), its starting
weights from a file (``--encoder-weights``: unwrapped, position embeddings resampled, head
re-initialised, strict otherwise) and its own weights trained or frozen
(``--encoder-train full|frozen``). Every bad input is one line, exit 2, before Ray."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from encoders.lm.controls import build_block
from encoders.visual.timm_encoder import EncoderChoiceError, create_encoder
from encoders.visual.timm_weights import (
    HEAD_LOADED,
    HEAD_REINITIALISED,
    check_file,
    freeze_encoder,
    load_weights,
)
from encoders.visual.vit import insert_after_last_block
from experiments.datasets.digits_folder import save_digits_folder
from experiments.encoder_choice import apply_encoder_choice
from experiments.param_groups import param_groups
from experiments.tasks.registry import task_for
from experiments.training import run_trial
from experiments.trial import (
    ENCODER_CONFIG,
    KEY_FINAL_NORM,
    NEUTRAL_HPARAMS,
    RUNTIME_HPARAMS,
    EncoderChoice,
    Hyperparameters,
    TrialSpec,
)
from orchestrator import cli
from tests.test_cli import no_sweep_may_start, run_bad  # noqa: F401  (autouse: no sweep starts)
from tests.test_dry_run import record, status_column

ROOT = Path(__file__).resolve().parents[1]
VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A ViT-Tiny's weights at 224 with ImageNet's 1000-way head, as safetensors."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in create_encoder(VIT, 1000).state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "vit_tiny.safetensors"
    save_file(state, path)
    return path, state


def _with_block(num_classes: int, image_size: int = 32):
    model = create_encoder(VIT, num_classes, image_size)
    block = torch.nn.Sequential(torch.nn.Linear(192, 192))  # stands in for the LM block
    return insert_after_last_block(model, block), block


def _saved(tmp_path: Path, state: dict[str, torch.Tensor], how: str) -> Path:
    if how == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, path)
    elif how == "model+module":  # a training checkpoint: {"model": DataParallel's names, ...}
        path = tmp_path / "checkpoint.pth"
        torch.save({"epoch": 7, "model": {f"module.{k}": v for k, v in state.items()}}, path)
    else:  # torch.save of a state_dict under "state_dict", any file name (a zip's magic)
        path = tmp_path / "encoder.weights"
        torch.save({"state_dict": state}, path)
    return path


@pytest.mark.parametrize("how", ["safetensors", "model+module", "state_dict"])
def test_weights_load_unwrapped_with_resampled_positions_and_a_new_head(tmp_path, vit_file, how):
    _, state = vit_file
    path = _saved(tmp_path, state, how)
    model, block = _with_block(num_classes=4, image_size=32)  # 2x2 patches, 4 classes
    torch.manual_seed(1)
    fresh_head = model.head.weight.detach().clone()
    info = load_weights(model, block, str(path))
    assert info == {"encoder_checkpoint": hashlib.sha256(path.read_bytes()).hexdigest(),
                    "encoder_head": HEAD_REINITIALISED}
    assert torch.equal(model.blocks[11].mlp.fc2.weight, state["blocks.11.mlp.fc2.weight"])
    assert torch.equal(model.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    assert model.pos_embed.shape == (1, 1 + 4, 192)  # resampled from 1 + 196
    assert torch.equal(model.pos_embed[:, 0], state["pos_embed"][:, 0])  # the class token's
    assert model.head.weight.shape == (4, 192)
    assert torch.equal(model.head.weight, fresh_head) or not torch.equal(
        model.head.weight[:4], state["head.weight"][:4])  # left as initialised


def test_the_same_class_count_loads_the_head_too(vit_file):
    path, state = vit_file
    model, block = _with_block(num_classes=1000, image_size=224)
    assert load_weights(model, block, str(path))["encoder_head"] == HEAD_LOADED
    assert torch.equal(model.head.weight, state["head.weight"])
    assert torch.equal(model.pos_embed, state["pos_embed"])


def test_a_file_of_another_model_names_what_does_not_fit_in_one_line(tmp_path, vit_file):
    _, state = vit_file
    odd = dict(state)
    odd.pop("blocks.3.norm1.weight")
    odd["blocks.0.extra.weight"] = torch.zeros(3)
    odd["blocks.2.mlp.fc1.weight"] = torch.zeros(10, 192)
    path = tmp_path / "odd.safetensors"
    save_file(odd, path)
    model, block = _with_block(num_classes=4)
    before = model.blocks[5].attn.qkv.weight.detach().clone()
    with pytest.raises(EncoderChoiceError) as e:
        load_weights(model, block, str(path))
    message = str(e.value)
    assert "\n" not in message
    assert "1 missing: blocks.3.norm1.weight" in message
    assert "1 unexpected: blocks.0.extra.weight" in message
    assert "blocks.2.mlp.fc1.weight (10, 192) vs (768, 192)" in message
    assert torch.equal(model.blocks[5].attn.qkv.weight, before)  # nothing half-loaded
    with torch.device("meta"):  # the pre-flight says the same from the header alone
        meta = create_encoder(VIT, 4, 32)
    with pytest.raises(EncoderChoiceError, match="1 missing: blocks.3.norm1.weight"):
        check_file(str(path), meta)


def test_an_fsspec_url_reads_like_a_file(vit_file):
    import fsspec

    path, state = vit_file
    url = "memory://encoders/vit_tiny.safetensors"
    with fsspec.open(url, "wb") as f:
        f.write(path.read_bytes())
    model, block = _with_block(num_classes=1000, image_size=224)
    assert load_weights(model, block, url)["encoder_checkpoint"] == hashlib.sha256(
        path.read_bytes()).hexdigest()
    assert torch.equal(model.cls_token, state["cls_token"])


def test_a_changed_file_is_refused(tmp_path, vit_file):
    path, _ = vit_file
    model, block = _with_block(num_classes=1000, image_size=224)
    with pytest.raises(EncoderChoiceError, match="changed since the sweep was planned"):
        load_weights(model, block, str(path), sha256="0" * 64)


def _one_step(model: torch.nn.Module, hp: Hyperparameters) -> None:
    optimizer = torch.optim.AdamW(param_groups(model, hp))
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()


def test_frozen_keeps_the_encoder_as_loaded_with_no_gradients_and_trains_the_rest(vit_file):
    path, state = vit_file
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="random", seed=0,
                           visual_dim=192)
    model = insert_after_last_block(create_encoder(VIT, 4, 32), block)
    task = task_for("images", EncoderChoice(name=VIT, image_size=32))
    choice = EncoderChoice(name=VIT, weights=str(path), train="frozen", image_size=32)
    info = apply_encoder_choice(model, block, task, choice)
    encoder = sum(v.numel() for k, v in state.items() if not k.startswith("head."))
    assert info["encoder_frozen_params"] == encoder - 196 * 192 + 4 * 192  # pos_embed resampled
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias", "blocks.12.proj_in.weight",
                         "blocks.12.proj_out.weight"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _one_step(model, Hyperparameters())
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n in trainable), n
        assert (p.grad is not None) == (n in trainable), n  # no gradient kept for frozen
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_full_trains_the_loaded_encoder():
    model, block = _with_block(num_classes=4)
    assert freeze_encoder(model, block) > 0  # what frozen would take out ...
    model, block = _with_block(num_classes=4)
    task = task_for("images", EncoderChoice(name=VIT, image_size=32))
    info = apply_encoder_choice(model, block, task, EncoderChoice(name=VIT, image_size=32))
    assert info["encoder_frozen_params"] == 0  # ... full does not
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    _one_step(model, Hyperparameters())
    assert not torch.equal(model.blocks[0].attn.qkv.weight, before)


def test_a_trial_on_an_image_folder_records_the_file_and_trains_only_what_it_should(
        tmp_path, vit_file):
    path, _ = vit_file
    data = save_digits_folder(tmp_path / "digits", per_class=4, size=32, classes=3)
    reports = []
    for train in ("full", "frozen"):
        trial = TrialSpec("minilm", "l6", (), "images", "adapters", 0,
                          Hyperparameters(epochs=1, batch_size=6, num_workers="0"),
                          EncoderChoice(VIT, str(path), "", train, 32))
        run_trial(trial, lambda metrics, state: reports.append((metrics, state)),
                  data_dir=data)
    (full, _), (frozen, frozen_state) = reports
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    for metrics in (full, frozen):
        assert metrics["encoder_checkpoint"] == sha
        assert metrics["encoder_head"] == HEAD_REINITIALISED  # 3 classes, not 1000
    adapters = 2 * 192 * 384
    assert frozen["trainable_params"] == adapters + 3 * 192 + 3
    assert full["trainable_params"] == frozen["trainable_params"] + frozen[
        "encoder_frozen_params"]
    assert set(frozen_state.model) == {"head.weight", "head.bias", "blocks.12.proj_in.weight",
                                       "blocks.12.proj_out.weight"}  # the checkpoint's share


# --- the command line: one line, exit 2, before Ray --------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_digits_folder(tmp_path_factory.mktemp("digits"), per_class=2, size=32,
                              classes=3)


IMAGES = ("--tasks", "images", "--encoder", VIT, "--image-size", "32")


@pytest.mark.parametrize(("argv", "expected"), [
    (["--tasks", "images"], "task images needs --encoder"),
    (["--encoder", VIT], "--encoder applies to tasks that choose their encoder (images); not"),
    (["--tasks", "images", "--encoder", "resnet18"], "a ResNet has no blocks sequence"),
    (["--tasks", "images", "--encoder", "vit_tinyy"], "unknown --encoder 'vit_tinyy'"),
    ([*IMAGES[:4], "--image-size", "8"], "does not run on 8x8 images"),
    (["--image-size", "64"], "--image-size applies to tasks that choose their encoder"),
    (["--encoder-train", "half"], "unknown --encoder-train 'half'; valid: full, frozen"),
    (["--tasks", "shapes3d", "--encoder-train", "frozen"],
     "--encoder-train frozen applies to tasks whose encoder is a timm model"),
    (["--tasks", "shapes3d", "--encoder-weights", "w.safetensors"],
     "--encoder-weights applies to tasks whose encoder is a timm model"),
    ([*IMAGES, "--encoder-weights", "nowhere.safetensors"], "no such file"),
    (["--tasks", "images", "--encoder", "eva02_tiny_patch14_224", "--image-size", "28",
      "--controls", "visual-block"], "last block is a EvaBlock (timm.models.eva), not timm's"),
])
def test_bad_encoder_input_is_one_line(capsys, argv, expected):
    assert expected in run_bad(capsys, *argv, "--dry-run")


def test_weights_that_do_not_fit_or_are_not_weights_are_one_line(capsys, tmp_path,
                                                                 folder):
    small = tmp_path / "deit_small.safetensors"
    save_file({k: v.contiguous() for k, v in create_encoder("deit_small_patch16_224", 3)
               .state_dict().items()}, small)
    err = run_bad(capsys, *IMAGES, "--data-dir", str(folder), "--encoder-weights", str(small))
    assert "does not fit VisionTransformer" in err and "of another shape" in err
    junk = tmp_path / "notes.txt"
    junk.write_text("not weights")
    assert "--encoder-weights" in run_bad(capsys, *IMAGES, "--encoder-weights", str(junk))
    err = run_bad(capsys, *IMAGES, "--data-dir", str(tmp_path))
    assert "no class folders in train/" in err


def test_a_dry_run_keys_cells_by_the_file_s_sha256_not_its_path(capsys, tmp_path,
                                                                  vit_file, folder):
    path, _ = vit_file
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(path.read_bytes())
    plans = []
    for where in (path, moved):
        spec = cli.spec_from_args(cli.build_parser().parse_args(
            [*IMAGES, "--encoder-weights", str(where), "--encoder-train", "full", "frozen"]))
        from orchestrator.plan import build_plan
        from orchestrator.preflight import preflight_encoder

        plans.append(build_plan(preflight_encoder(spec, str(folder))))
    assert [t.key for t in plans[0]] == [t.key for t in plans[1]]
    assert {t.encoder.train for t in plans[0]} == {"full", "frozen"}
    assert len({t.key for t in plans[0]}) == len(plans[0])
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert {t.encoder.checkpoint for t in plans[0]} == {sha}
    assert cli.main([*IMAGES, "--encoder-weights", str(path), "--encoder-train", "full",
                     "frozen", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"images[{VIT} 32px {sha[:8]} frozen]" in out and f"images[{VIT} 32px {sha[:8]}]" in out


def key_before_encoder_choices(t: TrialSpec) -> str:
    """A trial's key as it was computed before the encoder fields (and positions) existed."""
    cfg = {k: v for k, v in t.to_config().items() if k not in RUNTIME_HPARAMS
           and k not in ENCODER_CONFIG and k != "position" and not (k in NEUTRAL_HPARAMS and v == NEUTRAL_HPARAMS[k])}
    cfg["final_norm"] = KEY_FINAL_NORM.get(cfg["final_norm"], cfg["final_norm"])
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def test_a_finished_imagenet_vit_cell_is_still_finished(capsys, tmp_path):
    """imagenet-vit-* are presets of the images task now; a cell finished before keeps its
    key (computed as it was before the encoder fields existed) and is not run again."""
    argv = ["--preset", "imagenet_deit", "--family", "opt", "--sizes", "125m", "--controls",
            "pretrained", "none", "--tasks", "imagenet-vit-tiny", "--seeds", "0"]
    plan = cli.spec_from_args(cli.build_parser().parse_args(argv))
    from orchestrator.plan import build_plan

    trials = build_plan(plan)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for t in trials:
        record(uri, "lmblocks-imagenet_deit", key_before_encoder_choices(t), "FINISHED")
    capsys.readouterr()
    assert cli.main([*argv, "--dry-run", "--tracking-uri", uri]) == 0
    assert status_column(capsys.readouterr().out) == ["finished"] * len(trials)


# --- end to end, through the CLI and Ray -------------------------------------------------


@pytest.mark.slow
def test_a_sweep_over_png_images_with_a_saved_vit_full_and_frozen(tmp_path, vit_file):
    """No code written: a folder of real images (scikit-learn's digits as PNG files), a timm
    ViT whose weights were saved to a file, its encoder trained and frozen, one sweep."""
    from mlflow.tracking import MlflowClient

    path, _ = vit_file
    data = save_digits_folder(tmp_path / "digits", per_class=12, size=32, classes=4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [sys.executable, str(ROOT / "sweep.py"), *IMAGES, "--data-dir", str(data),
            "--encoder-weights", str(path), "--encoder-train", "full", "frozen",
            "--controls", "none", "pretrained", "--layers", "last", "--seeds", "0",
            "--epochs", "2", "--batch-size", "16", "--quiet", "--tracking-uri", uri,
            "--storage", str(tmp_path / "runs"), "--experiment", "own-encoder"]
    proc = subprocess.run(argv, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=540,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("own-encoder")
    runs = client.search_runs([exp.experiment_id], "tags.`lmblocks.kind` = 'trial'")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    by = {(r.data.params["control"], r.data.params["encoder_train"]): r for r in runs}
    for run in runs:  # Bai et al.'s measures on every run; the similarity where a block is
        assert {"grad_coherence", "grad_coherence_init"} <= set(run.data.metrics)
        assert ("block_cka_init" in run.data.metrics) == (run.data.params["control"] != "none")
        assert run.data.tags["encoder.checkpoint"] == sha
        assert run.data.params["encoder_checkpoint"] == sha
        assert run.data.params["encoder"] == VIT and run.data.params["image_size"] == "32"
    for control in ("none", "pretrained"):
        full, frozen = by[(control, "full")], by[(control, "frozen")]
        assert int(frozen.data.params["trainable_params"]) < int(
            full.data.params["trainable_params"]) - 5_000_000
        assert int(frozen.data.tags["encoder.frozen_params"]) > 5_000_000
    out = proc.stdout
    assert f"images[{VIT} 32px {sha[:8]} frozen]" in out  # its own cell in the report
    assert f"images[{VIT} 32px {sha[:8]}]" in out
    assert TrialSpec.from_config(by[("pretrained", "frozen")].data.params).encoder == EncoderChoice(
        VIT, str(path), sha, "frozen", 32)  # MLflow's text gives the choice back


def test_a_built_in_timm_task_takes_weights_saved_from_its_own_model(capsys, tmp_path):
    """--encoder-weights is not only the images task's: digits' timm ViT takes a file saved
    from its own model (a torch.save zip), and the dry run keys its cells by the file."""
    from experiments.tasks.registry import get_task

    path = tmp_path / "digits_vit.pt"
    torch.save(get_task("digits").build_model(None).state_dict(), path)
    assert cli.main(["--tasks", "digits", "--encoder-weights", str(path), "--dry-run",
                     "--seeds", "0"]) == 0
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"digits[{sha[:8]}]" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "size"), [("deit_small_patch16_224", 32),
                                            ("eva02_tiny_patch14_224", 28),
                                            ("beit_base_patch16_224", 32),
                                            ("cait_xxs24_224", 32)])
def test_vit_like_families_take_the_block_after_their_last_block(name, size):
    """EVA hands its blocks rotary embeddings, BEiT a shared relative-position bias, CaiT has
    class-attention blocks after ``blocks``: the LM block, appended to ``blocks``, runs in
    each (it takes no positions of theirs), changes the output and gets gradients."""
    task = task_for("images", EncoderChoice(name=name, image_size=size))
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="random", seed=0,
                           visual_dim=task.visual_dim)
    model = task.build_model(block).eval()
    assert model.blocks[-1] is block
    x, _ = task.example(2)
    out = model(x)
    assert out.shape == (2, task.num_classes)
    out.logsumexp(-1).mean().backward()
    assert block.proj_in.weight.grad is not None and block.proj_in.weight.grad.abs().sum() > 0
    with torch.no_grad():
        block.proj_out.weight.add_(torch.randn_like(block.proj_out.weight))  # not a scale:
        # the final norm undoes one
        assert not torch.allclose(model(x), out)
