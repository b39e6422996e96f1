"""Action recognition: moving digits (embedded), Something-Something-v2 and Kinetics-400 from
clip folders with an annotation list (``--data-dir``).

The embedded default is built so that only motion tells the class: a scikit-learn digit
moves one pixel a frame in one of 8 directions across a 16x16 canvas that wraps around, from
a uniformly random start. Any single frame is a digit at a uniformly random place, so a
model that ignores time is at chance (1/8); the label is the direction. Clips are
(1, 8, 16, 16); tubes of 2 frames x 4 x 4 pixels make 64 tokens.

Real data: ``train.csv`` and ``val.csv`` (VideoMAE's lists: one ``<clip> <label>`` per line,
space or comma separated, clip relative to ``--data-dir``), each clip a folder of frames
(``.jpg``/``.png``, in name order) or a video file (decoded with PyAV when it is installed).
16 frames are taken evenly spaced, resized to 224 and normalised; no flips (SSv2's labels
say left and right).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from encoders.video_vit import VideoViT
from encoders.vit import insert_after_last_block
from experiments.tasks.registry import DataError, Task, data_root, register_task

DIRECTIONS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
FRAMES, CANVAS, TUBE, PATCH, EMBED_DIM = 8, 16, 2, 4, 64


def make_moving_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, FRAMES, CANVAS, CANVAS) clips in [0, 1] and (n,) direction labels."""
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0
    rng = np.random.default_rng(seed)
    clips = np.zeros((n, 1, FRAMES, CANVAS, CANVAS), np.float32)
    labels = rng.integers(0, len(DIRECTIONS), n)
    for i in range(n):
        canvas = np.zeros((CANVAS, CANVAS), np.float32)
        canvas[:8, :8] = images[rng.integers(len(images))]
        y0, x0 = rng.integers(0, CANVAS, 2)
        dy, dx = DIRECTIONS[labels[i]]
        for t in range(FRAMES):
            clips[i, 0, t] = np.roll(canvas, (y0 + dy * t, x0 + dx * t), axis=(0, 1))
    return torch.from_numpy(clips), torch.from_numpy(labels)


@cache
def _moving_digits() -> tuple[TensorDataset, TensorDataset]:
    return TensorDataset(*make_moving_digits(1600, seed=1)), TensorDataset(*make_moving_digits(400, seed=2))


def build_moving_digits(data_dir: str | None = None):
    return _moving_digits()


def ink_tubes(clips: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, H, W) -> (B, tokens) bool in the Conv3d's (t, h, w) order: tubes with ink."""
    b, _, t, h, w = clips.shape
    tubes = clips.reshape(b, t // TUBE, TUBE, h // PATCH, PATCH, w // PATCH, PATCH)
    return (tubes.amax(dim=(2, 4, 6)) > 0.25).reshape(b, -1)


def small_video_vit(block: nn.Module | None) -> nn.Module:
    vit = VideoViT(num_classes=len(DIRECTIONS), frames=FRAMES, img_size=CANVAS, in_chans=1,
                   tube=TUBE, patch=PATCH, embed_dim=EMBED_DIM, depth=2, num_heads=4,
                   mlp_ratio=2.0)
    return insert_after_last_block(vit, block)


# --- real clip folders ------------------------------------------------------------------

CLIP_FRAMES, CLIP_SIZE = 16, 224
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
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


def video_vit_small(num_classes: int):
    def build_model(block: nn.Module | None) -> nn.Module:
        vit = VideoViT(num_classes=num_classes, frames=CLIP_FRAMES, img_size=CLIP_SIZE)
        return insert_after_last_block(vit, block)

    return build_model


register_task(Task(
    name="moving-digits",
    description="digits moving in 8 directions on a wrapping canvas (embedded): motion only",
    visual_dim=EMBED_DIM,
    build_data=build_moving_digits,
    build_model=small_video_vit,
    informative_tokens=ink_tubes,
    chance=1 / len(DIRECTIONS),
    num_classes=len(DIRECTIONS),
))

for _task, _classes in (("ssv2", 174), ("kinetics400", 400)):
    _build, _check = clip_folders(_task)
    register_task(Task(
        name=_task,
        description=f"{_task} clip folders, 16 frames at 224, VideoMAE-style ViT-S (tube 2x16x16)",
        visual_dim=384,
        build_data=_build,
        build_model=video_vit_small(_classes),
        check_data=_check,
        chance=1 / _classes,
        num_classes=_classes,
    ))
