"""Action recognition: moving digits (motion is the only cue), the tube-embedding video ViT
with the block appended, each control, clip folders with an annotation list, the preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.lm.controls import build_block
from experiments.datasets.base import DataError
from experiments.datasets.moving_digits import DIRECTIONS, make_moving_digits
from experiments.tasks.registry import get_task
from experiments.tasks.video import ink_tubes
from experiments.training import run_trial
from orchestrator import cli
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec


def test_moving_digits_only_motion_tells_the_class():
    clips, labels = make_moving_digits(64, seed=3)
    assert clips.shape == (64, 1, 8, 16, 16) and set(labels.tolist()) <= set(range(8))
    for clip, label in zip(clips[:8], labels[:8], strict=True):
        dy, dx = DIRECTIONS[label]
        for t in range(7):  # each frame is the last one moved one pixel, wrapping around
            assert torch.equal(clip[0, t + 1], torch.roll(clip[0, t], (dy, dx), dims=(0, 1)))
    # where the digit is in the first frame says nothing about the direction
    first = clips[:, 0, 0].flatten(1).argmax(-1).float()
    assert torch.equal(make_moving_digits(64, seed=3)[0], clips)
    assert first.std() > 30  # starts spread over the 256 pixels


def test_ink_tubes_follow_the_conv3d_token_order():
    clips = torch.zeros(1, 1, 8, 16, 16)
    clips[0, 0, 3, 5, 13] = 1.0  # frame 3 -> tube t=1; row 5 -> h=1; col 13 -> w=3
    mask = ink_tubes(clips)
    assert mask.shape == (1, 64) and mask[0].nonzero().flatten().tolist() == [1 * 16 + 1 * 4 + 3]


def test_block_receives_the_class_and_tube_tokens():
    """(Every control training with the block on the path: tests/test_tasks.py.)"""
    task = get_task("moving-digits")
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="pretrained",
                           seed=0, visual_dim=task.visual_dim)
    model = task.build_model(block)
    assert model.blocks[-1] is block
    seen = []
    block.register_forward_hook(lambda m, a, out: seen.append(a[0].shape))
    x, _ = make_moving_digits(8, seed=0)
    assert model(x).shape == (8, len(DIRECTIONS))
    assert seen == [torch.Size([8, 65, 64])]  # class token + 4 x 4 x 4 tubes


@pytest.mark.slow
def test_embedded_default_trains_clearly_above_chance():
    spec = load_spec("video").replace(controls=("none",), seeds=(0,), epochs=6)
    (trial,) = build_plan(spec)
    out: list[dict] = []
    torch.set_num_threads(2)
    run_trial(trial, lambda metrics, state: out.append(metrics))
    assert out[-1]["val_acc"] > 3 * get_task("moving-digits").chance, out[-1]
    assert out[-1]["val_top5_acc"] >= out[-1]["val_acc"]
    assert 0 < out[-1]["conc_act_before"] < 1


def write_clips(root, n=3, frames=5):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        lines = []
        for i in range(n):
            d = root / "frames" / f"{split}{i}"
            d.mkdir(parents=True)
            for f in range(frames):
                Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
                    d / f"img_{f:05d}.jpg")
            lines.append(f"frames/{split}{i} {i * 7}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_clip_folders_with_an_annotation_list(tmp_path):
    write_clips(tmp_path)
    task = get_task("ssv2")
    train, val = task.build_data(str(tmp_path))
    assert len(train) == 3 and len(val) == 3
    clip, label = train[2]
    assert clip.shape == (3, 16, 224, 224) and label == 14  # 5 frames sampled up to 16
    assert abs(float(clip.mean())) < 1.5
    (tmp_path / "train.csv").write_text("movie.mp4 3\n")
    (tmp_path / "movie.mp4").write_bytes(b"\x00" * 16)
    try:
        import av  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="needs PyAV"):
            task.build_data(str(tmp_path))[0][0]


def test_bad_video_data_dir_and_the_preset(tmp_path, capsys, monkeypatch):
    from orchestrator import tuner

    monkeypatch.setattr(tuner, "run_sweep", lambda *a, **k: pytest.fail("reached Ray"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text("nowhere/clip 1\n")
    for argv, msg in ((["--tasks", "kinetics400"], "task 'kinetics400' needs --data-dir"),
                      (["--tasks", "ssv2", "--data-dir", str(tmp_path)],
                       "clip '" + str(tmp_path / "nowhere" / "clip") + "' not found")):
        assert cli.main([*argv, "--controls", "none"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert cli.main(["--preset", "video", "--dry-run"]) == 0
    assert "moving-digits" in capsys.readouterr().out
