"""ScanQA / SQA3D-style questions on ScanNet scenes, from ``--data-dir``.

``ScanQA_v1.0_{train,val}.json`` (lists of records: scene_id, question, answers; SQA3D-style
records carry a ``situation``, prepended to the question) and the scenes' points
``scannet_data/<scene_id>_aligned_vert.npy`` (fallback ``_vert.npy``), with semantic labels
(``_sem_label.npy``) marking the object points when present. Answers are classes of the
training answers' vocabulary; multi-hot targets, exact-match accuracy. The model is built
before the data is read, so both vocabularies are capped at fixed sizes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from encoders.visual.text import WordVocab
from experiments.datasets.base import DataError, data_root
from experiments.datasets.point_questions import PointQADataset, encode_questions, one_hot_scores

SCANQA_LAYOUT = ("ScanQA_v1.0_train.json and ScanQA_v1.0_val.json (or under qa/): lists of "
                 "{scene_id, question_id, question, answers[, situation]}, and "
                 "scannet_data/<scene_id>_aligned_vert.npy (or _vert.npy; N x 6+, xyz first; "
                 "optional <scene_id>_sem_label.npy)")
SCANQA_POINTS = 4096
SCANQA_TEXT_LEN = 48  # words kept: SQA3D's situation and question together run to ~30
# The model is built before the data is read, so both vocabularies are capped at sizes fixed
# here: the most frequent training words and answers; unused answer slots score 0.
MAX_WORDS = 4096
MAX_ANSWERS = 1000
NON_OBJECT_LABELS = (0, 1, 2, 22)  # nyu40: unannotated, wall, floor, ceiling


def _scanqa_file(root: Path, split: str) -> Path | None:
    for path in (root / f"ScanQA_v1.0_{split}.json", root / "qa" / f"ScanQA_v1.0_{split}.json"):
        if path.is_file():
            return path
    return None


def _vert_file(root: Path, scene_id: str) -> Path | None:
    for suffix in ("_aligned_vert.npy", "_vert.npy"):
        if (path := root / "scannet_data" / f"{scene_id}{suffix}").is_file():
            return path
    return None


def scanqa_records(data_dir: str | Path | None, split: str) -> tuple[Path, list[dict]]:
    """(the data root, the split's question records), or DataError naming the layout."""
    root = data_root("scanqa", data_dir, SCANQA_LAYOUT)
    path = _scanqa_file(root, split)
    if path is None:
        raise DataError(f"--data-dir {str(data_dir)!r}: no ScanQA_v1.0_{split}.json for task "
                        f"'scanqa'; expected {SCANQA_LAYOUT}")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSON ({err.msg}, line {err.lineno}); expected "
                        f"{SCANQA_LAYOUT}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of question records; expected {SCANQA_LAYOUT}")
    return root, records


def check_scanqa(data_dir: str | Path | None) -> None:
    for split in ("train", "val"):
        root, records = scanqa_records(data_dir, split)
        missing = sorted({r["scene_id"] for r in records if _vert_file(root, r["scene_id"])
                          is None})
        if missing:
            raise DataError(f"--data-dir {str(data_dir)!r}: no scannet_data/{missing[0]}"
                            f"_aligned_vert.npy (or _vert.npy) for {len(missing)} {split} "
                            f"scene(s); expected {SCANQA_LAYOUT}")


def question_text(record: dict) -> str:
    """The question, after SQA3D's situation when the record has one."""
    situation = record.get("situation")
    return f"{situation} {record['question']}" if situation else record["question"]


def load_scene(root: Path, scene_id: str, points: int, seed: int) -> np.ndarray:
    """(points, 4): a fixed random subset of the scene's vertices (x, y, z, object flag:
    0 on walls, floor, ceiling and unlabelled points, when labels are there), in metres, the
    floor plan's middle at the origin and the lowest point at z = 0. Metres, not the unit
    ball: a room's patches then have offsets of tenths, where the patch embedding learns."""
    vert = np.load(_vert_file(root, scene_id))
    label_file = root / "scannet_data" / f"{scene_id}_sem_label.npy"
    flag = (~np.isin(np.load(label_file), NON_OBJECT_LABELS) if label_file.is_file()
            else np.ones(len(vert), bool))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vert), points, replace=len(vert) < points)
    xyz = vert[pick, :3].astype(np.float64)
    lo, hi = xyz.min(0), xyz.max(0)
    xyz -= np.r_[(lo[:2] + hi[:2]) / 2, lo[2]]
    return np.c_[xyz, flag[pick]].astype(np.float32)


@dataclass(frozen=True)
class ScanQAVocab:
    """Question words and answers, from the training questions only."""

    words: WordVocab
    answers: tuple[str, ...]


def scanqa_vocab(train: list[dict], max_answers: int = MAX_ANSWERS) -> ScanQAVocab:
    counts = Counter(a for r in train for a in r["answers"])
    return ScanQAVocab(WordVocab.build((question_text(r) for r in train), MAX_WORDS - 2),
                       tuple(a for a, _ in counts.most_common(max_answers)))


def scanqa_dataset(root: Path, records: list[dict], vocab: ScanQAVocab,
                   points: int = SCANQA_POINTS, max_len: int = SCANQA_TEXT_LEN,
                   seed: int = 0) -> PointQADataset:
    """Questions with at least one answer in the vocabulary (as ScanQA trains and scores)."""
    index = {a: i for i, a in enumerate(vocab.answers)}
    records = [r for r in records if any(a in index for a in r["answers"])]
    scene_ids = sorted({r["scene_id"] for r in records})
    row = {s: i for i, s in enumerate(scene_ids)}
    clouds = torch.from_numpy(np.stack([load_scene(root, s, points, seed) for s in scene_ids])
                              if scene_ids else np.zeros((0, points, 4), np.float32))
    ids, mask = (encode_questions(vocab.words, [question_text(r) for r in records], max_len)
                 if records else (torch.zeros(0, max_len, dtype=torch.long),) * 2)
    scores = one_hot_scores([r["answers"] for r in records], index, MAX_ANSWERS)
    scene_of = torch.tensor([row[r["scene_id"]] for r in records], dtype=torch.long)
    return PointQADataset(clouds, scene_of, ids, mask.bool(), scores)


def build_scanqa(data_dir: str | Path | None = None) -> tuple[PointQADataset, PointQADataset]:
    check_scanqa(data_dir)
    root, train = scanqa_records(data_dir, "train")
    _, val = scanqa_records(data_dir, "val")
    vocab = scanqa_vocab(train)
    return scanqa_dataset(root, train, vocab), scanqa_dataset(root, val, vocab)
