"""Flickr30K and COCO image-text retrieval from ``--data-dir``, in the Karpathy splits.

Karpathy layout: ``dataset_flickr30k.json`` / ``dataset_coco.json``
(``{"images": [{"filename", "filepath" (COCO), "split", "sentences": [{"raw"}]}]}``), images
under ``images/`` (Flickr: ``images/<filename>``; COCO: ``images/<filepath>/<filename>``);
train on ``train`` (+ ``restval``), validate on ``val``. Images are resized to 224x224 and
not flipped (captions say left and right).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from encoders.visual.text import WordVocab
from experiments.datasets.base import DataError, data_root
from experiments.datasets.captions import CaptionPairs, caption_pairs
from experiments.datasets.image_files import ImageFiles

MAX_CAPTION_WORDS = 10_000
KARPATHY_CAPTION_LEN = 32
KARPATHY = {  # task: (JSON file, images under a per-image filepath, nominal val images)
    "flickr30k": ("dataset_flickr30k.json", False, 1000),
    "coco-retrieval": ("dataset_coco.json", True, 5000),
}
TRAIN_SPLITS, VAL_SPLITS = ("train", "restval"), ("val",)


def karpathy_layout(task: str) -> str:
    json_name, filepath, _ = KARPATHY[task]
    where = "images/<filepath>/<filename>" if filepath else "images/<filename>"
    return f"{json_name} (Karpathy split) and the images as {where}"


def karpathy_image(root: Path, task: str, entry: dict) -> Path:
    parts = [entry["filepath"]] if KARPATHY[task][1] else []
    return root.joinpath("images", *parts, entry["filename"])


def karpathy_entries(data_dir: str | Path | None, task: str
                     ) -> tuple[Path, list[dict], list[dict]]:
    """(root, train entries, val entries); DataError naming the layout when it is not there."""
    layout = karpathy_layout(task)
    root = data_root(task, data_dir, layout)
    path = root / KARPATHY[task][0]
    if not path.is_file():
        raise DataError(f"--data-dir {str(data_dir)!r}: no {path.name} for task {task!r}; "
                        f"expected {layout}")
    try:
        images = json.loads(path.read_text())["images"]
        train = [e for e in images if e["split"] in TRAIN_SPLITS]
        val = [e for e in images if e["split"] in VAL_SPLITS]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a Karpathy split file ({e!r}); expected {layout}") from None
    for name, entries in (("train", train), ("val", val)):
        if not entries:
            raise DataError(f"{path}: no {name} images; expected {layout}")
    first = karpathy_image(root, task, val[0])
    if not first.is_file():
        raise DataError(f"{path}: image {str(first)!r} not found; expected {layout}")
    return root, train, val


@cache
def _karpathy(task: str, data_dir: str) -> tuple[CaptionPairs, CaptionPairs]:
    root, train, val = karpathy_entries(data_dir, task)

    def captions(entries: list[dict]) -> list[list[str]]:
        return [[s["raw"] for s in e["sentences"]] for e in entries]

    vocab = WordVocab.build((c for caps in captions(train) for c in caps),
                            max_size=MAX_CAPTION_WORDS)

    def split(entries: list[dict]) -> CaptionPairs:
        files = ImageFiles([karpathy_image(root, task, e) for e in entries])
        return caption_pairs(files, captions(entries), vocab, KARPATHY_CAPTION_LEN)

    return split(train), split(val)


def karpathy_task(task: str):
    def build(data_dir: str | Path | None = None) -> tuple[CaptionPairs, CaptionPairs]:
        karpathy_entries(data_dir, task)
        return _karpathy(task, str(data_dir))

    def check(data_dir: str | Path | None) -> None:
        karpathy_entries(data_dir, task)

    return build, check
