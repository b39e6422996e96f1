"""3D question answering: the scene generator's geometry, the joint point + question model
with the block appended (each control), the per-type metrics, the ScanQA loader on a tiny
fixture in its real layout, the preset, and an end-to-end trial above the answer prior."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoders.lm.controls import build_block
from encoders.visual.point_encoder import group
from experiments.batches import to_device
from experiments.datasets import rooms3d as rooms
from experiments.datasets import scanqa as sq
from experiments.datasets.base import DataError
from experiments.datasets.rooms3d import (
    ANSWERS,
    VOCAB,
    Scene,
    ask,
    blind_accuracy,
    make_dataset,
    make_scenes,
    render,
    situated_answer,
)
from experiments.probe import probe_batch, probe_filtering
from experiments.tasks import vqa3d  # registers the tasks
from experiments.tasks.registry import get_task
from experiments.training import run_trial
from orchestrator import cli
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on two shared cores, two threads of small ops (the FPS loop) wait
    on each other, and a trial runs several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def known_scene(shapes=("cube", "cone", "torus")) -> Scene:
    """The wall at +x; cube at -x, cone at +y, torus at -y (jittered off the axes)."""
    pos = {"cube": (-1.7, -0.2), "cone": (0.15, 1.6), "torus": (0.0, -1.9)}
    heights = {"cube": 0.9, "cone": 1.9, "torus": 0.4}
    return Scene(tuple(shapes), np.array([pos[s] for s in shapes]),
                 np.array([heights[s] for s in shapes]), np.array([1.0, 0.0]))


def test_situated_answers_follow_the_geometry():
    s = known_scene()
    # facing the wall (+x): behind is -x, left is +y (z up, right-handed), right is -y
    assert [situated_answer(s, "facing", r) for r in ("behind", "left", "right")] == [
        "cube", "cone", "torus"]
    assert situated_answer(s, "facing", "front") is None  # the wall is in front
    # back to the wall (facing -x): in front is -x, left is -y, right is +y
    assert [situated_answer(s, "back", r) for r in ("front", "left", "right")] == [
        "cube", "torus", "cone"]
    # turning the whole layout keeps every answer; mirroring it swaps left and right
    c, si = np.cos(2.0), np.sin(2.0)
    rot = np.array([[c, si], [-si, c]])
    turned = Scene(s.shapes, s.positions @ rot, s.heights, s.wall @ rot)
    mirrored = Scene(s.shapes, s.positions * [1, -1], s.heights, s.wall * [1, -1])
    for situation in ("facing", "back"):
        for relation in rooms.RELATIONS:
            assert situated_answer(turned, situation, relation) == situated_answer(
                s, situation, relation)
        assert situated_answer(mirrored, situation, "left") == situated_answer(
            s, situation, "right")
    # an empty side has no answer, and no such question is asked
    two = known_scene(("cone", "torus"))
    assert situated_answer(two, "facing", "behind") is None
    for seed in range(10):
        assert all("wall. what is behind" not in q and "wall. what is in front" not in q
                   for q, _, _ in ask(two, np.random.default_rng(seed)))


def test_questions_are_answered_from_the_scene():
    s = known_scene()
    for seed in range(20):
        for q, a, kind in ask(s, np.random.default_rng(seed)):
            if kind == "situated":
                situation = next(k for k, t in rooms.SITUATIONS.items() if q.startswith(t))
                relation = next(r for r, t in rooms.RELATIONS.items() if t in q)
                assert a == situated_answer(s, situation, relation)
            elif kind == "count":
                assert a == "3"
            elif kind == "exists":
                assert a == ("yes" if q.split("a ")[-1].rstrip("?") in s.shapes else "no")
            else:
                assert a == "cone"  # the tallest
            assert a in ANSWERS


def test_generator_is_seeded_and_renders_standing_objects():
    a, b = make_dataset(3, seed=7), make_dataset(3, seed=7)
    assert torch.equal(a.clouds, b.clouds) and torch.equal(a.ids, b.ids)
    assert not torch.equal(a.clouds, make_dataset(3, seed=8).clouds)
    scene = known_scene()
    cloud = render(scene, np.random.default_rng(0))
    assert cloud.shape == (rooms.POINTS, 4)
    cloud[:, :3] /= rooms.UNITS_PER_METRE  # metres
    background = cloud[cloud[:, 3] == 0]
    assert len(background) == rooms.FLOOR_POINTS + rooms.WALL_POINTS
    wall = background[background[:, 0] > rooms.FLOOR_HALF]  # the wall stands at +x
    assert len(wall) == rooms.WALL_POINTS
    assert np.allclose(wall[:, 0], rooms.WALL_DISTANCE) and wall[:, 2].max() <= 1.0
    floor = background[background[:, 0] <= rooms.FLOOR_HALF]
    assert np.abs(floor[:, 2]).max() < 0.05
    objects = cloud[cloud[:, 3] == 1]
    # each object's points stand on the floor around its position, as tall as its height
    for pos, height in zip(scene.positions, scene.heights, strict=True):
        near = objects[np.linalg.norm(objects[:, :2] - pos, axis=1) < 0.8]
        assert len(near) > 100
        assert abs(near[:, 2].min()) < 0.05 and abs(near[:, 2].max() - height) < 0.05


def test_the_answers_need_the_scene():
    """The same question has different answers in different scenes: the best constant answer
    per question text (what a model that ignores the points can reach) is far from 1."""
    _, qa, _ = make_scenes(200, seed=32)
    blind = blind_accuracy(qa)
    assert blind == rooms.chance_by_type()
    assert get_task("shape-scenes-3d").chance == pytest.approx(blind["all"])
    assert blind["situated"] < 0.3 and blind["exists"] < 0.65 and blind["all"] < 0.45
    # seeing which objects are there, but not where, is not enough for the situated ones
    layout_blind = rooms.layout_blind_situated(*make_scenes(200, seed=32))
    assert blind["situated"] + 0.1 < layout_blind < 0.5
    assert blind_accuracy([("q", "a", "t"), ("q", "a", "t"), ("q", "b", "t")]) == {
        "all": pytest.approx(2 / 3), "t": pytest.approx(2 / 3)}


def test_probe_tokens_follow_the_models_patches():
    task = get_task("shape-scenes-3d")
    ds = make_dataset(2, seed=1)
    x = probe_batch(ds, 4)
    informative, valid = task.informative_tokens(x), task.valid_tokens(x)
    groups, length = vqa3d.GROUPS, rooms.QUESTION_LEN
    assert informative.shape == valid.shape == (4, groups + length)
    assert not informative[:, groups:].any() and torch.equal(valid[:, groups:], x[2])
    # a patch is informative when its centre (the model's own FPS) is on an object
    idx = group(x[0][..., :3], groups, vqa3d.K)[2]
    flags = x[0][torch.arange(4)[:, None], idx, 3]
    assert torch.equal(informative[:, :groups], flags > 0.5)
    assert 0 < informative.float().mean() < 1


def test_block_sees_the_joint_sequence_and_padding_is_ignored():
    """Point patches and question words together through the frozen block; the probe over
    them. (Every control training with the block on the path: tests/test_tasks.py.)"""
    task = get_task("shape-scenes-3d")
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="pretrained",
                           seed=0, visual_dim=task.visual_dim)
    model = task.build_model(block)
    assert model.blocks[-1] is block  # appended after the last joint block
    seen = []
    block.register_forward_hook(lambda m, a, out: seen.append((a[0].shape, out.shape)))
    ds = make_dataset(2, seed=0)
    points, ids, mask = probe_batch(ds, 6)
    model.eval()
    logits = model(points, ids, mask)
    assert logits.shape == (6, len(ANSWERS))
    # cls + point patches + question words, at the encoder's width, in and out
    width = 1 + vqa3d.GROUPS + rooms.QUESTION_LEN
    assert seen[0] == (torch.Size([6, width, 64]),) * 2
    # more padding after the question changes nothing (padded keys are masked everywhere)
    pad = torch.zeros(6, 8, dtype=torch.long)  # eight more padding words
    ids2, mask2 = torch.cat([ids, pad], 1), torch.cat([mask, pad.bool()], 1)
    assert torch.allclose(model(points, ids2, mask2), logits, atol=1e-4)
    # a different question changes the answer logits
    assert not torch.allclose(model(points, ids.roll(1, 0), mask.roll(1, 0)), logits)
    metrics = probe_filtering(model, task, (points, ids, mask))
    assert 0 < metrics["conc_act_after"] < 1 and 0 < metrics["conc_cls_attn"] < 1


def test_per_type_accuracy_reads_the_type_word():
    task = get_task("shape-scenes-3d")
    ds = make_dataset(4, seed=3)
    answers = ds.scores.argmax(-1)
    word = VOCAB.stoi[rooms.TYPE_WORDS["situated"]]
    situated = (ds.ids == word).any(-1)

    class Oracle(torch.nn.Module):  # right on the situated questions only
        def forward(self, points, ids, mask):
            right = torch.nn.functional.one_hot(answers[: len(ids)], len(ANSWERS)).float()
            return torch.where((ids == word).any(-1, keepdim=True), right,
                               -right)

    loader = [(to_device((ds.clouds[ds.scene_of], ds.ids, ds.mask), "cpu"), ds.scores)]
    m = task.objective.evaluate(Oracle(), loader, "cpu")
    assert m["val_acc_situated"] == 1 and m["val_acc_count"] == 0
    assert m["val_acc"] == pytest.approx(situated.float().mean().item())
    assert {"val_acc_exists", "val_acc_tallest", "val_loss"} <= set(m)


# --- real data: ScanQA / SQA3D layout -------------------------------------------------


def write_scanqa(root, *, aligned: bool = True):
    """Two scenes as small vertex arrays (xyz, rgb, normal; as ScanRefer's preprocessing
    writes them), a few questions in ScanQA's format, one with an SQA3D situation."""
    data = root / "scannet_data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, scene in enumerate(("scene0000_00", "scene0001_00")):
        vert = np.c_[rng.uniform(-3, 3, (300, 2)) + 10 * i, rng.uniform(0, 2, 300),
                     rng.integers(0, 255, (300, 3)), rng.normal(size=(300, 3))]
        suffix = "_aligned_vert.npy" if aligned and i == 0 else "_vert.npy"
        np.save(data / f"{scene}{suffix}", vert.astype(np.float32))
    labels = np.full(300, 5)
    labels[:100] = 2  # floor
    np.save(data / "scene0000_00_sem_label.npy", labels.astype(np.uint32))

    def record(scene, qid, question, answers, **extra):
        return {"scene_id": scene, "question_id": qid, "question": question,
                "answers": answers, "object_ids": [8], "object_names": ["cabinet"], **extra}

    train = [record("scene0000_00", "train-scene0000-0", "What color is the table?",
                    ["brown", "dark brown"]),
             record("scene0000_00", "train-scene0000-1", "Where is the chair placed?",
                    ["under table"]),
             record("scene0001_00", "train-scene0001-0", "What is in front of me?", ["brown"],
                    situation="I am sitting on the bed facing the window.")]
    val = [record("scene0001_00", "val-scene0001-0", "What color is the chair?",
                  ["dark brown", "black"]),
           record("scene0001_00", "val-scene0001-1", "How many lamps?", ["seven"])]
    (root / "ScanQA_v1.0_train.json").write_text(json.dumps(train))
    (root / "ScanQA_v1.0_val.json").write_text(json.dumps(val))


def test_scanqa_layout(tmp_path):
    write_scanqa(tmp_path)
    task = get_task("scanqa")
    task.check_data(str(tmp_path))
    train, val = task.build_data(str(tmp_path))
    assert len(train) == 3 and len(val) == 1  # "seven" was never a training answer
    (points, ids, mask), scores = train[0]
    assert points.shape == (sq.SCANQA_POINTS, 4) and ids.shape == mask.shape
    assert scores.shape == (sq.MAX_ANSWERS,)
    vocab = sq.scanqa_vocab(json.loads((tmp_path / "ScanQA_v1.0_train.json").read_text()))
    assert vocab.answers[:1] == ("brown",)  # the most frequent first
    assert set(vocab.answers) == {"brown", "dark brown", "under table"}
    assert scores[[vocab.answers.index("brown"), vocab.answers.index("dark brown")]].tolist() \
        == [1, 1] and scores.sum() == 2  # every accepted answer scores 1: exact match
    # the situation comes first in the question tokens
    situated = train[2][0][1][: train[2][0][2].sum()]
    assert [vocab.words.itos[int(i)] for i in situated[:4]] == ["i", "am", "sitting", "on"]
    assert vocab.words.itos[int(situated[-1])] == "me"
    # in metres, centred on its floor plan, standing on z = 0; floor points flagged 0
    xyz = points[:, :3]
    lo, hi = xyz.min(0).values, xyz.max(0).values
    assert torch.allclose((lo + hi)[:2], torch.zeros(2), atol=1e-5) and lo[2] == 0
    raw = np.load(tmp_path / "scannet_data" / "scene0000_00_aligned_vert.npy")[:, :3]
    assert torch.allclose(hi - lo, torch.from_numpy(np.ptp(raw, 0)), atol=0.1)  # not rescaled
    assert 0 < points[:, 3].mean() < 1
    assert (train[2][0][0][:, 3] == 1).all()  # no labels for scene0001: every point counts
    # the val answer "dark brown" is in the vocabulary; "black" is not
    assert val[0][1][vocab.answers.index("dark brown")] == 1 and val[0][1].sum() == 1
    model = task.build_model(None)
    batch = probe_batch(train, 3)
    assert model(*batch).shape == (3, sq.MAX_ANSWERS)
    assert task.informative_tokens(batch).shape == (3, vqa3d.SCANQA_GROUPS + ids.shape[0])


def test_scanqa_bad_data_dir_is_one_line(tmp_path):
    task = get_task("scanqa")
    with pytest.raises(DataError, match="needs --data-dir"):
        task.check_data(None)
    with pytest.raises(DataError, match="is not a directory"):
        task.check_data(str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"no ScanQA_v1.0_train.json .*expected ScanQA_v1.0_"):
        task.check_data(str(tmp_path))
    write_scanqa(tmp_path)
    (tmp_path / "scannet_data" / "scene0001_00_vert.npy").unlink()
    with pytest.raises(DataError) as err:
        task.build_data(str(tmp_path))
    assert "scannet_data/scene0001_00_aligned_vert.npy" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_vqa3d_preset_dry_run(capsys):
    assert cli.main(["--preset", "vqa3d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "shape-scenes-3d" in out and "10 trials" in out  # (2 layers + 3 controls) x 2 seeds


@pytest.mark.slow
def test_embedded_default_trains_clearly_above_the_answer_prior():
    task = get_task("shape-scenes-3d")
    spec = load_spec("vqa3d").replace(controls=("none",), seeds=(0,), epochs=7)
    (trial,) = build_plan(spec)
    out: list[dict] = []
    run_trial(trial, lambda metrics, state: out.append(metrics))
    chance = rooms.chance_by_type()
    best = max(out, key=lambda m: m["val_acc"])
    assert best["val_acc"] > task.chance + 0.12, (chance, best)  # 0.58 vs 0.40 measured
    assert best["val_acc_situated"] > chance["situated"] + 0.1, (chance, best)
    for name in ("conc_act_before", "conc_act_after", "conc_cls_attn"):
        assert 0 < out[-1][name] < 1, out[-1]
