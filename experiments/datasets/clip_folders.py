"""Video clips from ``--data-dir``: Something-Something-v2 and Kinetics-400 as clip folders
with an annotation list.

``train.csv`` and ``val.csv`` (VideoMAE's lists: one ``<clip> <label>`` per line, space or
comma separated, clip relative to ``--data-dir``), each clip a folder of frames
(``.jpg``/``.png``, in name order) or a video file (decoded with PyAV when it is installed).
16 frames are taken evenly spaced, resized to 224 and normalised with ImageNet's mean and
std; no flips (SSv2's labels say left and right).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.data import Dataset

from experiments.datasets.base import DataError, data_root

CLIP_FRAMES, CLIP_SIZE = 16, 224
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1, 1)
LAYOUT = ("train.csv and val.csv ('<clip> <label>' per line), each clip a folder of frames "
          "(.jpg/.png) or a video file")


def read_list(data_dir: str | Path | None, split: str, task: str) -> list[tuple[Path, int]]:
    root = data_root(task, data_dir, LAYOUT)
    name = "train" if split == "train" else "val"
    listing = next((root / f"{name}{ext}" for ext in (".csv", ".txt") if (root / f"{name}{ext}").is_file()), None)
    if listing is None:
        raise DataError(f"--data-dir {str(data_dir)!r}: no {name}.csv for task {task!r}; "
                        f"expected {LAYOUT}")
    clips = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        try:
            clips.append((root / parts[0], int(parts[-1])))
        except (IndexError, ValueError):
            raise DataError(f"{listing}:{n}: expected '<clip> <label>', got {line!r}") from None
    if not clips:
        raise DataError(f"{listing} lists no clips")
    if not clips[0][0].exists():
        raise DataError(f"{listing}: clip {str(clips[0][0])!r} not found (paths are relative "
                        "to --data-dir)")
    return clips


def read_frames(clip: Path) -> list:
    """The clip's frames as HWC uint8 arrays."""
    if clip.is_dir():
        from PIL import Image

        files = sorted(p for p in clip.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        return [np.asarray(Image.open(p).convert("RGB")) for p in files]
    try:
        import av
    except ImportError:
        raise DataError(f"{clip}: a video file needs PyAV (pip install av), or extract its "
                        "frames into a folder") from None
    with av.open(str(clip)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


class ClipDataset(Dataset):
    def __init__(self, clips: list[tuple[Path, int]]) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.clips[i]
        frames = read_frames(path)
        if not frames:
            raise DataError(f"{path}: no frames")
        idx = np.linspace(0, len(frames) - 1, CLIP_FRAMES).round().astype(int)  # evenly spaced
        clip = torch.from_numpy(np.stack([frames[j] for j in idx])).permute(3, 0, 1, 2).float() / 255
        clip = nn.functional.interpolate(clip, size=(CLIP_SIZE, CLIP_SIZE), mode="bilinear",
                                         align_corners=False)
        return (clip - MEAN) / STD, label


def clip_folders(task: str):
    def build(data_dir: str | Path | None = None):
        return (ClipDataset(read_list(data_dir, "train", task)),
                ClipDataset(read_list(data_dir, "val", task)))

    def check(data_dir: str | Path | None) -> None:
        read_list(data_dir, "train", task)
        read_list(data_dir, "val", task)

    return build, check
