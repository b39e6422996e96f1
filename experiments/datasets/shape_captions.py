"""Captioned two-shape scenes (embedded): the retrieval task's data, two captions per image
(a relation and its paraphrase, ``shape_scenes.make_captioned``).

The embedded validation scenes have pairwise distinct canonical descriptions, so each
caption describes exactly one validation image and recall is well defined. Training scenes
are other draws of the same descriptions (positions and sizes differ).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from encoders.visual.text import WordVocab
from experiments.datasets import shape_scenes as scenes
from experiments.datasets.captions import CaptionPairs, caption_pairs

N_TRAIN, N_VAL, TRAIN_SEED, VAL_SEED = 1500, 200, 21, 22
CAPTION_LEN = 8  # the longest caption has 8 words
CAPTIONS_PER_IMAGE = 2


@cache
def shape_caption_vocab() -> WordVocab:
    """Every word the caption templates can produce (fixed by the templates)."""
    return WordVocab.build(scenes.all_captions())


def shape_retrieval_split(n: int, seed: int, distinct: bool) -> CaptionPairs:
    images, items = scenes.make_captioned(n, seed, distinct=distinct)
    return caption_pairs(torch.from_numpy(images), [it.captions for it in items],
                         shape_caption_vocab(), CAPTION_LEN)


@cache
def _shape_retrieval() -> tuple[CaptionPairs, CaptionPairs]:
    return (shape_retrieval_split(N_TRAIN, TRAIN_SEED, distinct=False),
            shape_retrieval_split(N_VAL, VAL_SEED, distinct=True))


def build_shape_retrieval(data_dir: str | Path | None = None) -> tuple[CaptionPairs, CaptionPairs]:
    """Embedded: ``data_dir`` is not used."""
    return _shape_retrieval()
