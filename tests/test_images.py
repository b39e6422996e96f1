"""Real image datasets: CIFAR in torchvision's on-disk format and ImageFolder trees, on tiny
fixtures written in those layouts; the block after the ViTs; the training recipe."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from encoders.lm.controls import build_block
from experiments.datasets.base import DataError
from experiments.datasets.cifar import read_cifar_batch
from experiments.recipe import lr_at, make_loss, make_mixer
from experiments.tasks.registry import get_task
from experiments.training import train_epoch
from orchestrator import cli


def write_cifar10(root, n_train=8, n_test=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = n_test if name == "test_batch" else n_train // 5 + 1
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"batch_label": f"batch {i}".encode()}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_layout_normalised_and_augmented(tmp_path):
    write_cifar10(tmp_path)
    task = get_task("cifar10")
    train, val = task.build_data(str(tmp_path))
    assert len(train) == 5 * 2 and len(val) == 4
    x, y = val[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 10
    assert torch.equal(val[0][0], val[0][0])  # validation: no augmentation
    torch.manual_seed(0)
    views = {tuple(train[0][0].flatten()[:50].tolist()) for _ in range(8)}
    assert len(views) > 1  # training: random crops and flips
    raw, labels = read_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch", b"labels")
    assert raw.shape == (4, 3, 32, 32) and labels.tolist() == val.labels.tolist()


def test_cifar_batches_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing builtins.print"):
        read_cifar_batch(path, b"labels")


def test_cifar_batches_through_the_training_loop_with_mixup_and_cutmix(tmp_path):
    """The real CIFAR loader, timm's Mixup/CutMix and the recipe's loss in ``train_epoch``.
    (Every control training with the block on the path: tests/test_tasks.py.)"""
    write_cifar10(tmp_path)
    task = get_task("cifar10")
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="pretrained",
                           seed=0, visual_dim=task.visual_dim)
    model = task.build_model(block)
    assert len(model.blocks) == 12 + 1
    train, _ = task.build_data(str(tmp_path))
    loader = torch.utils.data.DataLoader(train, batch_size=4, drop_last=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    hp = SimpleNamespace(mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    mixer = make_mixer(hp, task.num_classes)
    adapter, frozen = block.proj_in.weight.clone(), block.layers[0].output.dense.weight.clone()
    steps: list[int] = []
    stats = train_epoch(model, loader, opt, "cpu", 0, lr=lambda step: steps.append(step) or 1e-3,
                        loss_fn=make_loss(hp, mixing=True), mixer=mixer)
    loss = stats.loss
    assert len(train) == 10 and steps == [0, 1]  # two full batches of 4 (Mixup's drop_last)
    assert (stats.steps, stats.samples) == (2, 8) and stats.samples_per_s > 0
    assert 0 <= stats.data_wait_share < 1
    # soft targets (mixed, smoothed): the loss stays above zero even for a perfect model
    assert math.isfinite(loss) and loss > 0.1
    assert not torch.equal(block.proj_in.weight, adapter)
    assert torch.equal(block.layers[0].output.dense.weight, frozen)


def write_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
                    d / f"{i}.png")


def test_imagefolder_tree_at_224_with_vit_small(tmp_path):
    write_folder(tmp_path)
    task = get_task("imagenet-vit-small")
    train, val = task.build_data(str(tmp_path))
    assert len(train) == 6 and len(val) == 2 and train.classes == ["cat", "dog"]
    x, y = val[1]
    assert x.shape == (3, 224, 224) and y == 1  # cat/0.png, then dog/0.png
    block, _ = build_block(family="minilm", size="l6", layers=(0,), control="pretrained",
                           seed=0, visual_dim=task.visual_dim)
    model = task.build_model(block).eval()
    seen = []
    block.register_forward_hook(lambda m, a, out: seen.append(a[0].shape))
    with torch.no_grad():
        assert model(x[None]).shape == (1, 1000)
    assert seen == [torch.Size([1, 197, 384])]  # class token + 14x14 patches, ViT-S width


def test_wrong_image_data_dirs_exit_2_naming_the_layout(tmp_path, capsys, monkeypatch):
    from orchestrator import tuner

    monkeypatch.setattr(tuner, "run_sweep", lambda *a, **k: pytest.fail("reached Ray"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for argv, msg in (
        (["--tasks", "cifar10"], "task 'cifar10' needs --data-dir"),
        (["--tasks", "cifar100", "--data-dir", str(tmp_path / "empty")],
         "missing train, test for task 'cifar100'; expected cifar-100-python/"),
        (["--tasks", "imagenet-vit-tiny", "--data-dir", str(tmp_path / "empty")],
         "no class folders in train/"),
    ):
        assert cli.main([*argv, "--controls", "none"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    with pytest.raises(DataError):
        get_task("imagenet-vit-small").check_data(None)


def test_schedule_warmup_then_cosine():
    hp = SimpleNamespace(lr=1.0, epochs=10, warmup_epochs=2, schedule="cosine", size_lr_scale=1.0)
    assert lr_at(hp, 0, 0, 4) == pytest.approx(0.125)  # 1/4 epoch of 2 warm-up epochs
    assert lr_at(hp, 1, 3, 4) == pytest.approx(1.0)  # end of warm-up: the peak
    assert lr_at(hp, 5, 3, 4) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_at(hp, 9, 3, 4) == pytest.approx(0.01)  # the floor at the end
    flat = SimpleNamespace(lr=0.3, epochs=10, warmup_epochs=0, schedule="constant",
                           size_lr_scale=1.0)
    assert lr_at(flat, 7, 1, 4) == 0.3
    smooth = make_loss(SimpleNamespace(label_smoothing=0.1), mixing=False)
    logits = torch.tensor([[10.0, 0.0]])
    assert smooth(logits, torch.tensor([0])) > torch.nn.functional.cross_entropy(
        logits, torch.tensor([0]))


@pytest.mark.parametrize("preset", ["imagenet_deit", "cifar_small"])
def test_image_presets_dry_run(capsys, preset):
    assert cli.main(["--preset", preset, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("imagenet-vit-small" if preset == "imagenet_deit" else "cifar10") in out
    assert cli.main(["--preset", preset, "--schedule", "linear", "--dry-run"]) == 2


def test_augmented_batches_are_the_same_with_workers_and_after_resume(tmp_path):
    """CIFAR's random crops and flips, drawn per (seed, epoch, index): a trial reading in
    process, one reading with 2 worker processes, and one resumed at epoch 2 with 2 workers
    train on the same batches (the same losses, digit for digit)."""
    from experiments.training import run_trial
    from experiments.trial import Hyperparameters, TrialSpec

    write_cifar10(tmp_path, n_train=20)

    def run(workers, restore=None):
        hp = Hyperparameters(epochs=2, batch_size=8, num_workers=workers)
        seen, states = [], []
        run_trial(TrialSpec("", "", (), "cifar10", "none", 0, hp),
                  lambda m, s: (seen.append(m), states.append(s)), data_dir=tmp_path,
                  restore=restore)
        return seen, states

    inline, states = run("0")
    workers, _ = run("2")
    assert [m["num_workers"] for m in (inline[0], workers[0])] == [0, 2]
    for a, b in zip(inline, workers, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    resumed, _ = run("2", restore=states[0])
    assert resumed[0]["train_loss"] == pytest.approx(inline[1]["train_loss"], rel=1e-6)
    assert inline[0]["train_loss"] != inline[1]["train_loss"]


def test_randaugment_posterize_at_zero_bits_gives_black_not_an_error(tmp_path):
    """RandAugment's increasing posterize asks for 0 bits at its maximum magnitude; Pillow 11+
    raises on that, which killed ImageNet trials every few hundred images."""
    from PIL import Image

    from experiments.datasets.imagefolder import imagefolder_data, posterize

    img = Image.new("RGB", (8, 8), (200, 100, 50))
    assert posterize(img, 0).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert posterize(img, 8) is img and posterize(img, 2).getpixel((0, 0)) == (192, 64, 0)
    write_folder(tmp_path)
    train, _ = imagefolder_data(tmp_path)
    ops = [op for step in train.transform.transforms for op in getattr(step, "ops", [])]
    poster = [op for op in ops if op.name.startswith("Posterize")]
    assert poster and all(op.aug_fn is posterize for op in poster)
    for op in poster:  # the maximum magnitude, as the magnitude noise sometimes draws
        op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0
        assert op(img).getextrema() == ((0, 0), (0, 0), (0, 0))


def test_convstem_digits_tokens_sit_on_the_ink_patches_grid():
    """digits-convstem's 16 tokens are the stem's 4x4 output in row-major order, the order
    of ``ink_patches``: a pixel in the bottom-right corner reaches only the last token."""
    from experiments.tasks.digits import ink_patches

    task = get_task("digits-convstem")
    torch.manual_seed(0)
    model = task.build_model(None).eval()
    x, _ = task.example(2)
    with torch.no_grad():
        before = model.patch_embed(x)
        y = x.clone()
        y[:, :, 7, 7] += 1.0
        after = model.patch_embed(y)
    assert before.shape == (2, 16, task.visual_dim)
    changed = (after - before).abs().amax(dim=(0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [15]
    assert ink_patches(x).shape == (2, 16)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.patch_embed.modules()) == 3


def test_convstem_digits_no_block_learns_in_a_few_epochs():
    """The reason the default uses it: without a block it is above 0.85 after 3 epochs (the
    patchify ViT of task digits is at about 0.4 there)."""
    from experiments.training import run_trial
    from experiments.trial import Hyperparameters, TrialSpec

    seen = []
    run_trial(TrialSpec("", "", (), "digits-convstem", "none", 0,
                        Hyperparameters(epochs=3, schedule="cosine", warmup_epochs=1)),
              lambda metrics, state: seen.append(metrics["val_acc"]))
    assert len(seen) == 3 and seen[-1] > 0.85, seen
