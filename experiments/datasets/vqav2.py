"""VQAv2 from ``--data-dir``: official question/annotation JSON files and COCO images.

The layout is the official one: the question and annotation JSON
files of train2014 and val2014 and the COCO images in ``train2014/`` and ``val2014/``. Each
question's 10 annotator answers are normalised (lower case, punctuation and articles
dropped, number words as digits); the answer vocabulary is the 3129 most frequent
``multiple_choice_answer``s of train (the standard size), and an answer's target score is
min(#annotators who gave it / 3, 1). Questions none of whose answers are in the vocabulary
stay in both splits (a zero target row; on val they count as wrong, as they must). Images
are resized to 224x224 without cropping or flipping, which could cut out or mirror what a
question asks about ("what is left of ...").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import torch
from torch.utils.data import Dataset

from encoders.visual.text import WordVocab
from experiments.datasets.base import DataError, data_root
from experiments.datasets.image_files import image_transform

NUM_ANSWERS = 3129
MAX_QUESTION_WORDS = 10_000
VQAV2_QUESTION_LEN = 20
# About the VQA accuracy of answering "yes" to everything (Goyal et al. 2017, prior baseline).
VQAV2_CHANCE = 0.26
SPLITS = {"train": "train2014", "val": "val2014"}
VQAV2_LAYOUT = ("v2_OpenEnded_mscoco_{train,val}2014_questions.json, "
                "v2_mscoco_{train,val}2014_annotations.json and images in "
                "train2014/ and val2014/ (COCO_<split>2014_<image_id:012d>.jpg)")


def question_file(split: str) -> str:
    return f"v2_OpenEnded_mscoco_{SPLITS[split]}_questions.json"


def annotation_file(split: str) -> str:
    return f"v2_mscoco_{SPLITS[split]}_annotations.json"


def image_path(root: Path, split: str, image_id: int) -> Path:
    name = SPLITS[split]
    return root / name / f"COCO_{name}_{image_id:012d}.jpg"


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(answer: str) -> str:
    """'Two dogs.' -> '2 dogs'; "It's the red one!" -> 'its red 1'. A simplified form of the
    official VQA normalisation: lower case, apostrophes dropped, other punctuation a space,
    number words as digits, articles dropped."""
    text = _PUNCT.sub(" ", answer.lower().replace("'", ""))
    return " ".join(_NUMBER_WORDS.get(w, w) for w in text.split() if w not in _ARTICLES)


def answer_scores(answers: list[str]) -> dict[str, float]:
    """The annotators' (normalised) answers -> {answer: min(count / 3, 1)}."""
    counts = Counter(normalize_answer(a) for a in answers)
    return {a: min(c / 3, 1.0) for a, c in counts.items()}


def vqav2_check(data_dir: str | Path | None) -> Path:
    root = data_root("vqav2", data_dir, VQAV2_LAYOUT)
    wanted = [f(s) for s in SPLITS for f in (question_file, annotation_file)]
    missing = [n for n in wanted if not (root / n).is_file()]
    missing += [f"{d}/" for d in SPLITS.values() if not (root / d).is_dir()]
    if missing:
        raise DataError(f"--data-dir {str(data_dir)!r}: missing {', '.join(missing)} for task "
                        f"'vqav2'; expected {VQAV2_LAYOUT}")
    return root


def read_vqav2(root: Path, split: str) -> list[tuple[int, str, dict[str, float]]]:
    """(image id, question, {answer: score}) per question of ``split``."""
    questions = json.loads((root / question_file(split)).read_text())["questions"]
    annotations = json.loads((root / annotation_file(split)).read_text())["annotations"]
    by_id = {a["question_id"]: a for a in annotations}
    out = []
    for q in questions:
        ann = by_id.get(q["question_id"])
        if ann is None:
            raise DataError(f"{root / annotation_file(split)}: no annotation for question "
                            f"{q['question_id']}")
        out.append((q["image_id"], q["question"],
                    answer_scores([a["answer"] for a in ann["answers"]])))
    return out


def answer_vocabulary(root: Path, size: int = NUM_ANSWERS) -> list[str]:
    """The ``size`` most frequent normalised ``multiple_choice_answer``s of train."""
    annotations = json.loads((root / annotation_file("train")).read_text())["annotations"]
    counts = Counter(normalize_answer(a["multiple_choice_answer"]) for a in annotations)
    return [a for a, _ in counts.most_common(size)]


class VQAv2Dataset(Dataset):
    """((image (3, 224, 224), ids (L,), mask (L,)), scores (NUM_ANSWERS,)); images read
    lazily."""

    def __init__(self, root: Path, split: str, items: list[tuple[int, str, dict[str, float]]],
                 vocab: WordVocab, answers: list[str]) -> None:
        self.root, self.split, self.items, self.vocab = root, split, items, vocab
        self.answer_index = {a: i for i, a in enumerate(answers)}
        self.transform = image_transform()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        from PIL import Image

        image_id, question, scores = self.items[i]
        with Image.open(image_path(self.root, self.split, image_id)) as img:
            image = self.transform(img.convert("RGB"))
        ids, mask = self.vocab.encode(question, VQAV2_QUESTION_LEN)
        target = torch.zeros(NUM_ANSWERS)
        for answer, score in scores.items():
            if answer in self.answer_index:
                target[self.answer_index[answer]] = score
        return (image, ids, mask), target


@cache
def _vqav2(data_dir: str) -> tuple[VQAv2Dataset, VQAv2Dataset]:
    root = vqav2_check(data_dir)
    answers = answer_vocabulary(root)
    train, val = read_vqav2(root, "train"), read_vqav2(root, "val")
    vocab = WordVocab.build((q for _, q, _ in train), max_size=MAX_QUESTION_WORDS)
    return (VQAv2Dataset(root, "train", train, vocab, answers),
            VQAv2Dataset(root, "val", val, vocab, answers))


def build_vqav2(data_dir: str | Path | None = None) -> tuple[VQAv2Dataset, VQAv2Dataset]:
    vqav2_check(data_dir)
    return _vqav2(str(data_dir))
