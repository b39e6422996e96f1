"""Visual question answering: the shape-scene generator (seeded, balanced, answers that agree
with the object records), the joint image + question encoder with the block over the joint
sequence under each control, VQAv2's layout on a tiny fixture, the preset."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from encoders.lm.controls import build_block
from encoders.visual.text import PAD, UNK, words
from experiments.datasets import shape_scenes as scenes
from experiments.datasets import shape_vqa as sv
from experiments.datasets import vqav2 as v2
from experiments.datasets.base import DataError
from experiments.probe import probe
from experiments.tasks import vqa  # registers shape-vqa and vqav2
from experiments.tasks.registry import get_task
from experiments.training import run_trial
from orchestrator import cli
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec

EPOCHS = 3  # the end-to-end check; the preset trains 8


def oracle(question: str, scene: scenes.Scene) -> str:
    """The answer read off the object records, independently of ``shape_scenes.ask``."""
    def find(name: str) -> scenes.Shape:
        (obj,) = [o for o in scene if f"{o.colour} {o.shape}" == name]
        return obj

    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        (obj,) = [o for o in scene if o.shape == m[1]]
        return obj.colour
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        (obj,) = [o for o in scene if o.colour == m[1]]
        return obj.shape
    if m := re.fullmatch(r"how many (\w+) objects are there\?", question):
        return str(sum(o.colour == m[1] for o in scene))
    if question == "how many shapes are there?":
        return str(len(scene))
    if m := re.fullmatch(r"how many (square|circle|triangle)s are there\?", question):
        return str(sum(o.shape == m[1] for o in scene))
    if m := re.fullmatch(r"is the (\w+ \w+) left of the (\w+ \w+)\?", question):
        a, b = find(m[1]), find(m[2])
        assert abs(a.x - b.x) >= scenes.MARGIN  # never asked about a near tie
        return "yes" if a.x < b.x else "no"
    if m := re.fullmatch(r"what color is the shape left of the (\w+ \w+)\?", question):
        ref = find(m[1])
        (left,) = [o for o in scene if o.x < ref.x - scenes.MARGIN]
        assert all(o.x > ref.x + scenes.MARGIN for o in scene if o not in (left, ref))
        return left.colour
    raise AssertionError(f"unexpected question {question!r}")


def test_scenes_are_seeded_balanced_and_answered_from_the_records():
    images, qas, layouts = scenes.make_vqa(120, seed=3)
    assert images.shape == (120, 3, 32, 32)
    again, qas_again, _ = scenes.make_vqa(120, seed=3)
    assert np.array_equal(images, again) and qas == qas_again
    assert not np.array_equal(images, scenes.make_vqa(120, seed=4)[0])
    for image, qa, scene in zip(images, qas, layouts, strict=True):
        assert oracle(qa.question, scene) == qa.answer, (qa, scene)
        assert 2 <= len(scene) <= 4 and len({(o.colour, o.shape) for o in scene}) == len(scene)
        for obj in scene:  # the record is what is drawn: its colour at its centre
            assert tuple(image[:, int(obj.y), int(obj.x)]) == scenes.COLOURS[obj.colour]
    for kind, answers in scenes.KIND_ANSWERS.items():  # each kind's answers in turn
        counts = Counter(qa.answer for qa in qas if qa.kind == kind)
        assert set(counts) == set(answers) and max(counts.values()) - min(counts.values()) <= 1


def test_questions_about_a_hand_built_scene():
    scene = (scenes.Shape("blue", "triangle", 5.0, 8.0, 4.0),
             scenes.Shape("red", "square", 16.0, 20.0, 4.0),
             scenes.Shape("green", "circle", 26.0, 6.0, 4.0),
             scenes.Shape("blue", "circle", 27.0, 20.0, 4.0))
    asked = {kind: {qa.question: qa.answer for qa in scenes.ask(scene, kind)}
             for kind in scenes.KINDS}
    assert asked["color"] == {"what color is the triangle?": "blue",
                              "what color is the square?": "red"}  # two circles: not asked
    assert asked["shape"] == {"what shape is the red object?": "square",
                              "what shape is the green object?": "circle"}  # two blue ones
    assert asked["count_color"]["how many blue objects are there?"] == "2"
    assert asked["count_color"]["how many yellow objects are there?"] == "0"
    assert asked["count_shape"] == {"how many squares are there?": "1",
                                    "how many circles are there?": "2",
                                    "how many triangles are there?": "1"}
    assert asked["count_all"] == {"how many shapes are there?": "4"}
    assert asked["left_of"]["is the red square left of the green circle?"] == "yes"
    assert asked["left_of"]["is the green circle left of the blue triangle?"] == "no"
    # the circles' centres are 1 pixel apart (< MARGIN): never compared
    assert not any("green circle" in q and "blue circle" in q for q in asked["left_of"])
    assert len(asked["left_of"]) == 4 * 3 - 2
    # exactly one shape (the triangle) is left of the square, the others clearly right of it;
    # left of either circle are two shapes and the other circle within the margin
    assert asked["color_left_of"] == {"what color is the shape left of the red square?": "blue"}


def test_rendered_shapes_and_object_patches():
    square = scenes.Shape("yellow", "square", 12.0, 12.0, 4.0)
    image = scenes.render((square,))
    lit = image.max(0) > 0
    assert lit.sum() == 8 * 8  # pixel centres within 0.9 * 4 of the centre: 8 per axis
    assert np.array_equal(image[:, 12, 12], [1.0, 1.0, 0.0]) and image[:, 0, 0].sum() == 0
    x = torch.zeros(1, 3, 32, 32)
    x[0, 2, 9, 26] = 1.0  # row 9 -> patch row 1; column 26 -> patch column 3
    x[0, 0, 30, 0] = 0.2  # below the ink threshold
    assert scenes.object_patches(x)[0].nonzero().flatten().tolist() == [1 * 4 + 3]
    ids, mask = sv.shape_question_vocab().encode("how many shapes are there?", 10)
    inputs = (x, ids[None], mask[None])
    informative, valid = vqa.joint_informative(inputs), vqa.joint_valid(inputs)
    assert informative.shape == valid.shape == (1, 16 + 10)
    assert informative[0, :16].nonzero().flatten().tolist() == [7] and not informative[0, 16:].any()
    assert valid[0, :16].all() and valid[0, 16:].tolist() == [True] * 5 + [False] * 5


def test_chance_is_the_best_constant_answer_per_kind():
    qas = [scenes.QA("q", a, k) for k, a in
           [("color", "red"), ("color", "red"), ("color", "blue"), ("left_of", "no")]]
    assert scenes.constant_answer_accuracy(qas) == pytest.approx(3 / 4)
    _, val_qas, _ = scenes.make_vqa(sv.N_VAL, sv.VAL_SEED)
    task = get_task("shape-vqa")
    assert task.chance == pytest.approx(scenes.constant_answer_accuracy(val_qas))
    assert task.chance < 0.35  # balanced: about the mean of 1/(answers per kind), 1/3
    train, val = task.build_data()
    assert len(train) == sv.N_TRAIN and len(val) == sv.N_VAL
    (image, ids, mask), scores = val[0]
    assert image.shape == (3, 32, 32) and ids.shape == mask.shape == (sv.QUESTION_LEN,)
    assert scores.sum() == 1 and scenes.ANSWERS[int(scores.argmax())] == val_qas[0].answer
    assert (ids != UNK).all()  # the vocabulary covers every template, and its length:
    assert max(len(words(q)) for q in scenes.all_questions()) == sv.QUESTION_LEN


def test_block_sees_the_joint_sequence_and_padding_is_ignored():
    """Image and question tokens together through the frozen block, padded words masked
    everywhere; the probe over both. (Every control training with the block on the path:
    tests/test_tasks.py.)"""
    task = get_task("shape-vqa")
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="pretrained",
                           seed=0, visual_dim=task.visual_dim)
    model = task.build_model(block)
    assert model.blocks[-1] is block  # appended after the last joint block
    seen = []
    block.register_forward_hook(
        lambda m, a, kw, out: seen.append((a[0].shape, kw["padding_mask"].clone())),
        with_kwargs=True)
    _, val = task.build_data()
    # one question of each kind but the last, color_left_of (10 words: no padding)
    (image, ids, mask), _ = default_collate([val[i] for i in range(6)])
    model.eval()
    logits = model(image, ids, mask)
    assert logits.shape == (6, len(scenes.ANSWERS))
    # class token + 16 image tokens + 10 question tokens, text padding masked
    assert seen[0][0] == torch.Size([6, 1 + 16 + 10, task.visual_dim])
    assert torch.equal(seen[0][1], torch.cat([torch.ones(6, 17, dtype=torch.bool), mask], 1))
    # padding: its content and its amount do not change the answer
    noisy = torch.where(mask, ids, torch.randint(2, len(sv.shape_question_vocab()), ids.shape))
    assert torch.allclose(model(image, noisy, mask), logits, atol=1e-5)
    short = int(mask.sum(1).max())
    assert short < sv.QUESTION_LEN
    assert torch.allclose(model(image, ids[:, :short], mask[:, :short]), logits, atol=1e-5)
    assert not torch.allclose(model(image.flip(-1), ids, mask), logits, atol=1e-6)
    # the probe measures over image patches + question tokens
    inputs = (image, ids, mask)
    result = probe(model, inputs, task.informative_tokens(inputs),
                   valid=task.valid_tokens(inputs))
    assert result.maps["act_after"].shape == (6, 16 + 10)
    assert (result.maps["act_after"][:, 16:][~mask] == 0).all()  # padding left out


def write_vqav2(root, image_size=(40, 30)):
    """Two train questions about one image and one val question, official file names."""
    from PIL import Image

    def annotation(qid, image_id, mc, answers):
        return {"question_id": qid, "image_id": image_id, "multiple_choice_answer": mc,
                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]}

    splits = {
        "train2014": ([(1, 9, "What color is the bus?"), (2, 9, "Is it raining?")],
                      [annotation(1, 9, "red", ["red"] * 6 + ["Red."] + ["blue"] * 3),
                       annotation(2, 9, "no", ["no"] * 3 + ["yes"] * 2 + ["maybe"] * 5)]),
        "val2014": ([(3, 42, "Is the zebra sleeping?")],
                    [annotation(3, 42, "yes", ["yes"] * 2 + ["Two"] * 3 + ["blue"] * 5)]),
    }
    for split, (questions, anns) in splits.items():
        (root / split).mkdir()
        (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps(
            {"questions": [{"question_id": q, "image_id": i, "question": t}
                           for q, i, t in questions]}))
        (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps(
            {"annotations": anns}))
        for image_id in {i for _, i, _ in questions}:
            pixels = np.random.default_rng(image_id).integers(0, 256, (*image_size[::-1], 3))
            Image.fromarray(pixels.astype(np.uint8)).save(
                root / split / f"COCO_{split}_{image_id:012d}.jpg")


def test_vqav2_layout_answer_scores_and_vocabularies(tmp_path):
    write_vqav2(tmp_path)
    task = get_task("vqav2")
    task.check_data(str(tmp_path))
    answers = v2.answer_vocabulary(tmp_path)
    assert answers == ["red", "no"]  # multiple-choice answers of train, most frequent first
    train, val = task.build_data(str(tmp_path))
    assert len(train) == 2 and len(val) == 1
    (image, ids, mask), scores = train[0]
    assert image.shape == (3, 224, 224) and ids.shape == mask.shape == (20,)
    assert scores.shape == (v2.NUM_ANSWERS,)
    assert scores[0] == 1.0 and scores[1:].sum() == 0  # 7 of 10 said red (one "Red."); blue
    _, scores = train[1]  # 3 of 10 "no" -> 1.0; "yes" (2 of 10) is not in the vocabulary
    assert scores[1] == 1.0 and scores.sum() == 1.0
    assert v2.answer_scores(["yes"] * 2 + ["no"] * 8) == {"yes": pytest.approx(2 / 3),
                                                           "no": 1.0}
    assert v2.normalize_answer(" Two dogs. ") == "2 dogs"
    assert v2.normalize_answer("It's the red one!") == "its red 1"
    (_, val_ids, val_mask), val_scores = val[0]
    assert val_scores.sum() == 0  # "2", "yes" and "blue" are outside the train vocabulary
    words = ["is", "the", "zebra", "sleeping"]
    vocab = train.vocab
    assert val_ids[:4].tolist() == [vocab.stoi.get(w, UNK) for w in words]
    assert val_ids[2] == UNK and val_ids[0] != UNK  # vocabulary from train questions only
    assert val_mask.sum() == 4 and (val_ids[4:] == PAD).all()
    model = task.build_model(None).eval()
    inputs, _ = default_collate([train[0], train[1]])
    with torch.no_grad():
        assert model(*inputs).shape == (2, v2.NUM_ANSWERS)


def test_wrong_data_dir_is_one_line_before_anything_starts(tmp_path, capsys, monkeypatch):
    from orchestrator import tuner

    monkeypatch.setattr(tuner, "run_sweep", lambda *a, **k: pytest.fail("reached Ray"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="needs --data-dir"):
        get_task("vqav2").check_data(None)
    write_vqav2(tmp_path)
    (tmp_path / "v2_mscoco_val2014_annotations.json").unlink()
    for argv, msg in ((["--tasks", "vqav2"], "task 'vqav2' needs --data-dir"),
                      (["--tasks", "vqav2", "--data-dir", str(tmp_path / "nope")],
                       "is not a directory"),
                      (["--tasks", "vqav2", "--data-dir", str(tmp_path)],
                       "missing v2_mscoco_val2014_annotations.json for task 'vqav2'")):
        assert cli.main([*argv, "--controls", "none"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1


def test_vqa_preset_dry_run(capsys):
    assert cli.main(["--preset", "vqa", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "shape-vqa" in out and "10 trials" in out  # (2 layers + 3 controls) x 2 seeds
    assert cli.main(["--preset", "vqa", "--tasks", "vqav2", "--dry-run"]) == 0


@pytest.mark.slow
def test_embedded_default_trains_clearly_above_chance():
    task = get_task("shape-vqa")
    spec = load_spec("vqa").replace(controls=("none",), seeds=(0,), epochs=EPOCHS)
    (trial,) = build_plan(spec)
    out: list[dict] = []
    torch.set_num_threads(2)
    run_trial(trial, lambda metrics, state: out.append(metrics))
    assert out[-1]["best_val_acc"] > task.chance + 0.05, out[-1]  # ~3 SE at 700 questions
    conc = {k: v for k, v in out[-1].items() if k.startswith("conc_")}
    assert len(conc) == 7 and all(0 < v < 1 for v in conc.values()), conc  # + centred freq

