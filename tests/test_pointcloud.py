"""Point-cloud classification: procedural shapes, the Point-BERT-style encoder with the block
appended, each control, the h5 loaders on tiny fixtures in their real layouts, the preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.lm.controls import build_block
from encoders.visual.point_encoder import farthest_point_sample, group
from experiments.datasets.base import DataError
from experiments.datasets.point_h5 import read_h5
from experiments.datasets.point_shapes import SHAPES, make_shapes
from experiments.tasks.registry import get_task
from experiments.training import run_trial
from orchestrator import cli
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec


def test_shapes_are_seeded_labelled_and_flag_the_object():
    x, y = make_shapes(3, seed=5)
    assert x.shape == (3 * len(SHAPES), 256, 4) and y.tolist() == sorted(y.tolist())
    assert torch.equal(x, make_shapes(3, seed=5)[0]) and not torch.equal(x, make_shapes(3, 6)[0])
    on_object = x[..., 3].mean(1)
    assert ((on_object >= 0.69) & (on_object <= 0.91)).all()  # 10-30% floor
    floor = x[0][x[0, :, 3] == 0]
    assert floor[:, 2].std() < 0.05  # the background is a flat floor


def test_grouping_fps_and_knn():
    xyz = torch.rand(2, 64, 3)
    idx = farthest_point_sample(xyz, 8)
    assert all(len(set(row.tolist())) == 8 for row in idx)
    patches, centres, centre_idx = group(xyz, 8, 4)
    assert patches.shape == (2, 8, 4, 3) and centres.shape == (2, 8, 3)
    # the nearest neighbour of a centre is itself: a zero offset in every patch
    assert torch.allclose(patches[:, :, 0], torch.zeros(2, 8, 3), atol=1e-6)
    assert torch.equal(centre_idx, idx)


def test_block_receives_the_class_and_patch_tokens():
    """(Every control training with the block on the path: tests/test_tasks.py.)"""
    task = get_task("shapes3d")
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="pretrained",
                           seed=0, visual_dim=task.visual_dim)
    model = task.build_model(block)
    seen = []
    block.register_forward_hook(lambda m, a, out: seen.append((a[0].shape, out.shape)))
    x, _ = make_shapes(2, seed=0)
    assert model(x).shape == (12, len(SHAPES))
    # class token + 16 patch tokens, at the encoder's width, in and out
    assert seen == [(torch.Size([12, 17, 64]), torch.Size([12, 17, 64]))]


@pytest.mark.slow
def test_embedded_default_trains_clearly_above_chance():
    task = get_task("shapes3d")
    spec = load_spec("pointcloud").replace(controls=("none",), seeds=(0,), epochs=8)
    (trial,) = build_plan(spec)
    out: list[dict] = []
    run_trial(trial, lambda metrics, state: out.append(metrics))
    assert out[-1]["best_val_acc"] > 2.5 * task.chance, out[-1]
    assert 0 < out[-1]["val_mean_class_acc"] <= 1
    assert 0 < out[-1]["conc_act_before"] < 1  # object patches vs floor patches


def write_modelnet(root, n_train=6, n_test=4):
    import h5py

    d = root / "modelnet40_ply_hdf5_2048"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train0", n_train // 2), ("train1", n_train - n_train // 2),
                    ("test0", n_test)):
        with h5py.File(d / f"ply_data_{name}.h5", "w") as h5:
            h5["data"] = rng.normal(size=(n, 2048, 3)).astype(np.float32) * 5 + 3
            h5["label"] = rng.integers(0, 40, (n, 1)).astype(np.uint8)


def test_modelnet40_h5_layout(tmp_path):
    write_modelnet(tmp_path)
    task = get_task("modelnet40")
    train, val = task.build_data(str(tmp_path))
    assert len(train) == 6 and len(val) == 4
    x, y = train[0]
    assert x.shape == (1024, 4) and 0 <= int(y) < 40
    assert x[:, :3].norm(dim=-1).max() == pytest.approx(1.0, abs=1e-5)  # unit sphere
    assert torch.allclose(x[:, :3].mean(0), torch.zeros(3), atol=1e-5)  # centred
    assert (x[:, 3] == 1).all()  # no background in ModelNet
    model = task.build_model(None)
    assert model(torch.stack([train[i][0] for i in range(2)])).shape == (2, 40)


def test_scanobjectnn_mask_marks_background(tmp_path):
    import h5py

    d = tmp_path / "h5_files" / "main_split"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("training", "test"):
        with h5py.File(d / f"{name}_objectdataset_augmentedrot_scale75.h5", "w") as h5:
            h5["data"] = rng.normal(size=(3, 2048, 3)).astype(np.float32)
            h5["label"] = np.array([0, 7, 14])
            mask = np.zeros((3, 2048), np.int64)
            mask[:, :100] = -1  # background points
            h5["mask"] = mask
    train, val = get_task("scanobjectnn").build_data(tmp_path)
    assert len(val) == 3
    assert len(train) == 3 and train[1][1] == 7
    assert (train[0][0][:100, 3] == 0).all() and (train[0][0][100:, 3] == 1).all()
    files = sorted(d.glob("training*.h5"))
    assert len(read_h5(files, 512)) == 3


def test_wrong_data_dir_is_one_line_before_anything_starts(tmp_path, capsys, monkeypatch):
    from orchestrator import tuner

    monkeypatch.setattr(tuner, "run_sweep", lambda *a, **k: pytest.fail("reached Ray"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="needs --data-dir"):
        get_task("modelnet40").check_data(None)
    for argv, msg in ((["--tasks", "modelnet40"], "task 'modelnet40' needs --data-dir"),
                      (["--tasks", "modelnet40", "--data-dir", str(tmp_path / "nope")],
                       "is not a directory"),
                      (["--tasks", "scanobjectnn", "--data-dir", str(tmp_path)],
                       "no train files for task 'scanobjectnn'; expected h5_files/main_split/")):
        assert cli.main([*argv, "--controls", "none"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1


def test_pointcloud_preset_dry_run(capsys):
    assert cli.main(["--preset", "pointcloud", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "shapes3d" in out and "10 trials" in out  # (2 layers + 3 controls) x 2 seeds
    assert cli.main(["--preset", "pointcloud", "--tasks", "modelnet40", "--dry-run"]) == 0
