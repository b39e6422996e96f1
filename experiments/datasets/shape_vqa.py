"""Templated questions about rendered shape scenes (embedded): the 2D VQA task's data.

One question per scene, from ``shape_scenes.make_vqa`` (answers balanced per question kind);
the vocabulary is every word the templates can produce, and targets are one-hot rows over
``shape_scenes.ANSWERS`` (exact match under VQA accuracy).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from encoders.visual.text import WordVocab
from experiments.datasets import shape_scenes as scenes
from experiments.datasets.base import InputsDataset

N_TRAIN, N_VAL, TRAIN_SEED, VAL_SEED = 2800, 700, 11, 12  # 400 and 100 per kind
QUESTION_LEN = 10  # the longest question has 10 words
# Best constant answer per question kind on the validation draw (test_vqa recomputes it).
SHAPE_VQA_CHANCE = 236 / 700


@cache
def shape_question_vocab() -> WordVocab:
    """Every word the question templates can produce: the vocabulary is fixed by the
    templates, not by a draw, so the model can be sized before the data is built."""
    return WordVocab.build(scenes.all_questions())


def encode_questions(qas: list[scenes.QA]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, L) ids, (N, L) mask and (N, A) one-hot answer scores."""
    vocab = shape_question_vocab()
    ids, mask = zip(*(vocab.encode(qa.question, QUESTION_LEN) for qa in qas), strict=True)
    scores = torch.zeros(len(qas), len(scenes.ANSWERS))
    scores[torch.arange(len(qas)), [scenes.ANSWERS.index(qa.answer) for qa in qas]] = 1.0
    return torch.stack(ids), torch.stack(mask), scores


def shape_vqa_split(n: int, seed: int) -> InputsDataset:
    images, qas, _ = scenes.make_vqa(n, seed)
    ids, mask, scores = encode_questions(qas)
    return InputsDataset((torch.from_numpy(images), ids, mask), scores)


@cache
def _shape_vqa() -> tuple[InputsDataset, InputsDataset]:
    return shape_vqa_split(N_TRAIN, TRAIN_SEED), shape_vqa_split(N_VAL, VAL_SEED)


def build_shape_vqa(data_dir: str | Path | None = None) -> tuple[InputsDataset, InputsDataset]:
    """Embedded: ``data_dir`` is not used."""
    return _shape_vqa()
