"""Image-text retrieval: the captioned-scene generator (seeded, captions true to the object
records, distinct validation descriptions), the contrastive loss and recall@K on hand-made
embeddings, validation reading each image once (the same numbers as scoring the pairs), the
dual encoder sharing the block under each control, the Karpathy layouts on tiny fixtures, the
preset."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from encoders.lm.controls import build_block
from encoders.visual.text import UNK, words
from experiments.datasets import karpathy as kp
from experiments.datasets import shape_captions as sc
from experiments.datasets import shape_scenes as scenes
from experiments.datasets.base import DataError
from experiments.objectives import retrieval as objective
from experiments.tasks import retrieval  # registers the retrieval tasks
from experiments.tasks.registry import get_task
from experiments.training import run_trial
from orchestrator import cli
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec

EPOCHS = 3  # the end-to-end check; the preset trains 8


def test_captions_are_seeded_and_true_to_the_object_records():
    images, items = scenes.make_captioned(50, seed=3)
    assert images.shape == (50, 3, 32, 32)
    again, items_again = scenes.make_captioned(50, seed=3)
    assert np.array_equal(images, again) and items == items_again
    caption = re.compile(r"a (\w+ \w+) (left of|right of|above|below) a (\w+ \w+)")
    for image, item in zip(images, items, strict=True):
        objects = {f"{o.colour} {o.shape}": o for o in item.scene}
        assert len(objects) == 2 and len(item.captions) == 2
        for text in item.captions:
            first, rel, second = caption.fullmatch(text).groups()
            a, b = objects[first], objects[second]
            dx, dy = a.x - b.x, a.y - b.y  # y grows downwards
            if rel in ("left of", "right of"):
                assert abs(dx) >= abs(dy) + scenes.MARGIN and (dx < 0) == (rel == "left of")
            else:
                assert abs(dy) >= abs(dx) + scenes.MARGIN and (dy < 0) == (rel == "above")
        # the paraphrase names the same two objects the other way round
        assert item.captions[0].split(" ")[1:3] == item.captions[1].split(" ")[-2:]
        assert item.canonical[1] in ("left", "above")
        for obj in item.scene:
            assert tuple(image[:, int(obj.y), int(obj.x)]) == scenes.COLOURS[obj.colour]


def test_validation_descriptions_are_distinct():
    _, val = sc.build_shape_retrieval()
    _, items = scenes.make_captioned(sc.N_VAL, sc.VAL_SEED, distinct=True)
    assert len({it.canonical for it in items}) == sc.N_VAL
    assert len({c for it in items for c in it.captions}) == 2 * sc.N_VAL
    assert len(val) == 2 * sc.N_VAL
    assert val.image_index.tolist() == [i for i in range(sc.N_VAL) for _ in range(2)]
    _, loose = scenes.make_captioned(sc.N_VAL, sc.VAL_SEED)
    assert len({it.canonical for it in loose}) < sc.N_VAL  # dedupe is doing something
    with pytest.raises(ValueError, match="at most 264"):
        scenes.make_captioned(265, 0, distinct=True)
    (image, ids, mask), index = val[3]
    assert image.shape == (3, 32, 32) and index == 1 and (ids[mask] != UNK).all()
    assert max(len(words(c)) for c in scenes.all_captions()) == sc.CAPTION_LEN


# 3 images, 5 captions: captions 0, 1 are image 0's, caption 2 image 1's, 3 and 4 image 2's
SIM = torch.tensor([[0.90, 0.10, 0.50, 0.30, 0.20],
                    [0.80, 0.70, 0.60, 0.10, 0.00],
                    [0.85, 0.80, 0.70, 0.60, 0.10]])
CAPTION_IMAGE = torch.tensor([0, 0, 1, 2, 2])


def test_recall_of_hand_made_similarities():
    got = objective.recall_at_k(SIM, CAPTION_IMAGE, ks=(1, 2, 4))
    # image -> text, rank of its best caption: image 0 caption 0 first (0.90; its other
    # caption is last, but ANY counts); image 1 caption 2 third; image 2 caption 3 fourth
    assert got["val_r1_i2t"] == pytest.approx(1 / 3)
    assert got["val_r2_i2t"] == pytest.approx(1 / 3)
    assert got["val_r4_i2t"] == pytest.approx(1.0)
    # text -> image ranks: caption 0 -> 0, 1 -> 2, 2 -> 1, 3 -> 0, 4 -> 1
    assert got["val_r1_t2i"] == pytest.approx(2 / 5)
    assert got["val_r2_t2i"] == pytest.approx(4 / 5)
    assert got["val_r4_t2i"] == pytest.approx(1.0)
    assert got["val_rmean"] == pytest.approx((1 / 3 + 1 / 3 + 1 + 2 / 5 + 4 / 5 + 1) / 6)
    assert objective.recall_at_k(SIM, CAPTION_IMAGE)["val_r10_i2t"] == 1.0  # K > captions


class EmbeddingsAsModel(torch.nn.Module):
    """A 'model' whose images and captions are their own embeddings."""

    def embed_image(self, image):
        return image

    def embed_text(self, ids, mask):
        return ids

    def scale(self):
        return torch.tensor(2.0)


def test_evaluate_embeds_each_image_once_and_scores_all_pairs():
    image_emb = torch.eye(3)  # image i = e_i, so image_emb @ caption.T = SIM
    pairs = [((image_emb[i], SIM[:, j], torch.ones(1)), torch.tensor(i))
             for j, i in [(3, 2), (0, 0), (2, 1), (4, 2), (1, 0)]]  # out of order, repeated
    seen = []
    model = EmbeddingsAsModel()
    model.register_forward_pre_hook(lambda *a: pytest.fail("forward is not needed"))
    model.embed_image = lambda image: seen.append(len(image)) or image
    got = objective.CONTRASTIVE.evaluate(model, DataLoader(pairs, batch_size=2), "cpu")
    assert sum(seen) == 3  # every image once
    assert got["val_rmean"] == pytest.approx(objective.recall_at_k(SIM, CAPTION_IMAGE)["val_rmean"])
    # the loss over all images x all captions, by hand
    logits = 2.0 * SIM
    i2t = [-math.log(sum(math.exp(logits[i, j]) for j in range(5) if CAPTION_IMAGE[j] == i)
                     / sum(math.exp(v) for v in logits[i])) for i in range(3)]
    t2i = [-math.log(math.exp(logits[CAPTION_IMAGE[j], j]) / sum(math.exp(v) for v in logits[:, j]))
           for j in range(5)]
    assert got["val_loss"] == pytest.approx((sum(i2t) / 3 + sum(t2i) / 5) / 2, rel=1e-5)


def test_evaluate_reads_the_image_and_caption_streams_as_it_reads_pairs():
    image_emb = torch.eye(3)
    streams = [objective.ImageBatch(image_emb[[2, 0]], torch.tensor([2, 0])),
               objective.CaptionBatch(SIM.T[:3], torch.ones(3, 1), CAPTION_IMAGE[:3]),
               objective.ImageBatch(image_emb[[1]], torch.tensor([1])),
               objective.CaptionBatch(SIM.T[3:], torch.ones(2, 1), CAPTION_IMAGE[3:])]
    pairs = [((image_emb[i], SIM[:, j], torch.ones(1)), torch.tensor(i))
             for j, i in enumerate(CAPTION_IMAGE.tolist())]
    model = EmbeddingsAsModel()
    got = objective.CONTRASTIVE.evaluate(model, streams, "cpu")
    assert got == pytest.approx(objective.CONTRASTIVE.evaluate(model, DataLoader(pairs), "cpu"))
    assert got["val_rmean"] == pytest.approx(objective.recall_at_k(SIM, CAPTION_IMAGE)["val_rmean"])


@torch.no_grad()
def pairs_evaluate(model, loader) -> dict[str, float]:
    """The evaluation before ``val_loader`` (kept as the reference): pairs in, each image
    embedded at its first pair, every caption embedded."""
    model.eval()
    images, texts, caption_image = {}, [], []
    for (image, ids, mask), target in loader:
        texts.append(model.embed_text(ids, mask).float())
        caption_image.append(target)
        new, seen = [], set(images)
        for i, index in enumerate(target.tolist()):
            if index not in seen:
                seen.add(index)
                new.append(i)
        if new:
            emb = model.embed_image(image[new]).float()
            images.update({int(target[i]): e for i, e in zip(new, emb, strict=True)})
    order = sorted(images)
    row = {index: r for r, index in enumerate(order)}
    image_emb = torch.stack([images[i] for i in order])
    text_emb = torch.cat(texts)
    caption_row = torch.tensor([row[int(t)] for t in torch.cat(caption_image)])
    sim = image_emb @ text_emb.T
    positive = caption_row[None, :] == torch.arange(len(order))[:, None]
    loss = objective.contrastive_loss(model.scale().float() * sim, positive).item()
    return {"val_loss": loss, **objective.recall_at_k(sim, caption_row)}


class CountingImages(torch.utils.data.Dataset):
    """A split's images, counting how often each is read (``__getitem__``)."""

    def __init__(self, images) -> None:
        self.images, self.reads = images, [0] * len(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        self.reads[i] += 1
        return self.images[i]


def counted(pairs):
    """The same pairs over images that count their reads."""
    images = CountingImages(pairs.images)
    return type(pairs)(images, pairs.image_index, pairs.ids, pairs.mask), images


def test_validation_streams_give_the_pairs_numbers_and_read_each_image_once():
    """shape-retrieval's validation set (200 images, 2 captions each) through the model with
    the frozen block (untrained: training it above chance costs more than this check; a
    caption paired with the wrong image moves the loss and recall even so): the streams
    (batches of 48) score what the pairs (batches of 64) did, and read each image once per
    evaluation, not once per caption."""
    task = get_task("shape-retrieval")
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="pretrained",
                           seed=0, visual_dim=task.visual_dim)
    model = task.build_model(block)
    _, val = task.build_data()
    before, before_images = counted(val)
    expected = pairs_evaluate(model, DataLoader(before, batch_size=64))
    assert before_images.reads == [2] * sc.N_VAL  # the pairs: once per caption
    assert objective.CONTRASTIVE.evaluate(model, DataLoader(before, batch_size=64), "cpu") \
        == pytest.approx(expected, rel=1e-5, abs=1e-6)

    after, images = counted(val)
    loader = objective.CONTRASTIVE.val_loader(after, batch_size=48, num_workers=0)
    assert loader.images.batch_size == 48 and len(loader) == 5 + 9  # 200 images, 400 captions
    got = objective.CONTRASTIVE.evaluate(model, loader, "cpu")
    assert images.reads == [1] * sc.N_VAL
    assert set(got) == set(expected) and got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert 0 < got["val_rmean"] < 1 and got["val_loss"] > 0
    assert objective.CONTRASTIVE.evaluate(model, loader, "cpu") == pytest.approx(got)
    assert images.reads == [2] * sc.N_VAL  # once per evaluation: reusable every epoch


def test_val_loader_passes_the_loader_settings_on_and_falls_back_to_pairs():
    _, val = sc.build_shape_retrieval()
    def init(worker_id: int) -> None:
        pass

    loader = objective.CONTRASTIVE.val_loader(val, batch_size=100, num_workers=0,
                                              worker_init_fn=init, pin_memory=False)
    assert loader.images.worker_init_fn is init and loader.images.batch_size == 100
    kinds = [type(b).__name__ for b in loader]
    assert kinds == ["ImageBatch"] * 2 + ["CaptionBatch"] * 4
    batch = next(iter(loader))
    assert batch.image.shape == (100, 3, 32, 32) and batch.index.tolist() == list(range(100))
    pairs = [val[i] for i in range(4)]  # not CaptionPairs: its pairs, as the loop would
    plain = objective.CONTRASTIVE.val_loader(pairs, batch_size=2)
    assert isinstance(plain, DataLoader) and len(plain) == 2


def test_contrastive_loss_counts_every_caption_of_the_image_as_positive():
    target = torch.tensor([0, 0, 1])  # two captions of image 0 in the batch
    # uniform logits: image row 0 has 2 of 3 positives, row 2 one; columns the same
    zero = torch.zeros(3, 3)
    expected = -(2 * math.log(2 / 3) + math.log(1 / 3)) / 3
    assert objective.CONTRASTIVE.loss((torch.eye(3), zero, torch.tensor(1.0)), target).item() \
        == pytest.approx(expected)
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0]]), dim=-1)
    aligned = objective.CONTRASTIVE.loss((emb, emb, torch.tensor(100.0)), target)
    # pairs 0 and 1 are the same image: each other's caption is a positive, not a negative
    assert aligned.item() < 1e-6


def test_chance_is_the_random_ranking_rmean():
    # 2 images with 1 and 2 of 3 captions, K = 1: i2t 1/3 and 2/3; t2i 1/2
    assert objective.random_rmean([1, 2], ks=(1,)) == pytest.approx(0.5)
    gen = torch.Generator().manual_seed(0)
    caption_image = torch.arange(40).repeat_interleave(2)
    draws = [objective.recall_at_k(torch.rand(40, 80, generator=gen), caption_image)["val_rmean"]
             for _ in range(300)]
    assert sum(draws) / len(draws) == pytest.approx(objective.random_rmean([2] * 40), rel=0.05)
    assert get_task("shape-retrieval").chance == pytest.approx(objective.random_rmean([2] * 200))


def test_both_streams_pass_the_same_block_and_padding_is_ignored():
    """The caption stream and the image stream through the one frozen block; the learnable
    temperature gets a gradient. (Every control training with the block on the path:
    tests/test_tasks.py.)"""
    task = get_task("shape-retrieval")
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="pretrained",
                           seed=0, visual_dim=task.visual_dim)
    model = task.build_model(block)
    assert model.blocks[-1] is block
    seen = []
    block.register_forward_hook(lambda m, a, kw, out: seen.append(
        (a[0].shape, kw["padding_mask"])), with_kwargs=True)
    _, val = task.build_data()
    short = [i for i in range(len(val)) if val[i][0][2].sum() < sc.CAPTION_LEN][:6]
    (image, ids, mask), target = default_collate([val[i] for i in short])
    model.eval()
    image_emb, text_emb, scale = model(image, ids, mask)
    assert image_emb.shape == text_emb.shape == (6, retrieval.EMBED_DIM)
    assert torch.allclose(image_emb.norm(dim=-1), torch.ones(6))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-4)
    # the caption stream, then the image stream, through the one block
    assert seen[0][0] == torch.Size([6, 1 + sc.CAPTION_LEN, task.visual_dim])
    assert torch.equal(seen[0][1], torch.cat([torch.ones(6, 1, dtype=torch.bool), mask], 1))
    assert seen[1][0] == torch.Size([6, 1 + 16, task.visual_dim])
    assert torch.allclose(model.embed_image(image), image_emb, atol=1e-6)
    noisy = torch.where(mask, ids, torch.randint(2, len(sc.shape_caption_vocab()),
                                                  ids.shape))
    assert torch.allclose(model.embed_text(noisy, mask), text_emb, atol=1e-5)
    n = int(mask.sum(1).max())
    assert torch.allclose(model.embed_text(ids[:, :n], mask[:, :n]), text_emb, atol=1e-5)

    model.train()
    objective.CONTRASTIVE.loss(model(image, ids, mask), target).backward()
    assert model.logit_scale.grad.abs() > 0  # the temperature is learned


def write_karpathy(root, task: str):
    """3 train images (one restval), 2 val images with 3 and 2 captions, 1 test image."""
    from PIL import Image

    coco = task == "coco-retrieval"
    entries = [("train", ["a dog runs", "the dog is running"]),
               ("restval" if coco else "train", ["two cats sleep"]),
               ("train", ["a red bus", "a bus on a street", "buses"]),
               ("val", ["a zebra grazing", "zebra in a field", "a striped horse"]),
               ("val", ["a man surfing", "surfer on a wave"]),
               ("test", ["a test image"])]
    images = []
    for i, (split, sentences) in enumerate(entries):
        folder = "val2014" if split in ("val", "test") else "train2014"
        entry = {"filename": f"img{i}.jpg", "split": split,
                 "sentences": [{"raw": s, "tokens": s.split()} for s in sentences]}
        if coco:
            entry["filepath"] = folder
        images.append(entry)
        d = root / "images" / (folder if coco else "")
        d.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (30 + i, 40, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(d / entry["filename"])
    name = "dataset_coco.json" if coco else "dataset_flickr30k.json"
    (root / name).write_text(json.dumps({"images": images, "dataset": task}))


@pytest.mark.parametrize("task_name", ["flickr30k", "coco-retrieval"])
def test_karpathy_layouts_pair_every_caption_with_its_image(tmp_path, task_name):
    write_karpathy(tmp_path, task_name)
    task = get_task(task_name)
    task.check_data(str(tmp_path))
    train, val = task.build_data(str(tmp_path))
    assert len(train) == 2 + 1 + 3  # train (+ restval for COCO) captions
    assert train.image_index.tolist() == [0, 0, 1, 2, 2, 2]
    assert len(val) == 5 and val.image_index.tolist() == [0, 0, 0, 1, 1]
    (image, ids, mask), index = val[4]  # "surfer on a wave", the second val image's
    assert image.shape == (3, 224, 224) and index == 1
    assert ids.shape == mask.shape == (kp.KARPATHY_CAPTION_LEN,) and mask.sum() == 4
    assert ids[0] == UNK and ids[1] != UNK  # vocabulary of train captions: "on", no "surfer"
    assert torch.equal(val[0][0][0], val[2][0][0])  # one image, three captions
    assert not torch.equal(val[0][0][0], val[3][0][0])
    model = task.build_model(None).eval()
    inputs, _ = default_collate([val[0], val[3]])
    with torch.no_grad():
        image_emb, text_emb, _ = model(*inputs)
    assert image_emb.shape == text_emb.shape == (2, retrieval.KARPATHY_EMBED_DIM)


class PooledRetriever(torch.nn.Module):
    """A cheap stand-in for the Karpathy model: mean colour and mean token id."""

    def embed_image(self, image):
        return image.mean((2, 3))  # (B, 3)

    def embed_text(self, ids, mask):
        m = mask.float()
        return torch.stack([(ids * m).sum(1) / m.sum(1), m.sum(1), torch.ones(len(ids))], 1)

    def scale(self):
        return torch.tensor(3.0)


@pytest.mark.parametrize("task_name", ["flickr30k", "coco-retrieval"])
def test_karpathy_validation_decodes_each_image_file_once(tmp_path, task_name):
    write_karpathy(tmp_path, task_name)
    _, val = get_task(task_name).build_data(str(tmp_path))
    pairs, pair_images = counted(val)
    expected = pairs_evaluate(PooledRetriever(), DataLoader(pairs, batch_size=4))
    assert pair_images.reads == [3, 2]  # 3 and 2 captions: one decode each
    streams, images = counted(val)
    loader = objective.CONTRASTIVE.val_loader(streams, batch_size=4, num_workers=0)
    got = objective.CONTRASTIVE.evaluate(PooledRetriever(), loader, "cpu")
    assert images.reads == [1, 1]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_wrong_data_dir_is_one_line_before_anything_starts(tmp_path, capsys, monkeypatch):
    from orchestrator import tuner

    monkeypatch.setattr(tuner, "run_sweep", lambda *a, **k: pytest.fail("reached Ray"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="needs --data-dir"):
        get_task("flickr30k").check_data(None)
    write_karpathy(tmp_path / "coco", "coco-retrieval")
    (tmp_path / "coco" / "images" / "val2014" / "img3.jpg").unlink()
    (tmp_path / "empty").mkdir()
    for argv, msg in ((["--tasks", "flickr30k"], "task 'flickr30k' needs --data-dir"),
                      (["--tasks", "flickr30k", "--data-dir", str(tmp_path / "empty")],
                       "no dataset_flickr30k.json for task 'flickr30k'; expected"),
                      (["--tasks", "coco-retrieval", "--data-dir", str(tmp_path / "coco")],
                       "img3.jpg' not found")):
        assert cli.main([*argv, "--controls", "none"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1


def test_retrieval_preset_dry_run(capsys):
    assert cli.main(["--preset", "retrieval", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "shape-retrieval" in out and "10 trials" in out  # (2 layers + 3 controls) x 2 seeds
    assert cli.main(["--preset", "retrieval", "--tasks", "flickr30k", "--dry-run"]) == 0


@pytest.mark.slow
def test_embedded_default_trains_clearly_above_chance():
    task = get_task("shape-retrieval")
    spec = load_spec("retrieval").replace(controls=("none",), seeds=(0,), epochs=EPOCHS)
    (trial,) = build_plan(spec)
    out: list[dict] = []
    run_trial(trial, lambda metrics, state: out.append(metrics))
    assert out[-1]["best_val_rmean"] > 5 * task.chance, out[-1]
    assert out[-1]["val_r10_t2i"] > out[-1]["val_r1_t2i"]
    conc = {k: v for k, v in out[-1].items() if k.startswith("conc_")}
    assert len(conc) == 7 and all(0 < v < 1 for v in conc.values()), conc  # + centred freq
