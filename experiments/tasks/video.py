"""Action recognition: a tube-embedding video ViT (``encoders.visual.video_vit``) over moving
digits (embedded: motion is the only cue) or Something-Something-v2 / Kinetics-400 clip
folders (``--data-dir``), the block appended after its last block.
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.visual.video_vit import VideoViT
from encoders.visual.vit import insert_after_last_block
from experiments.datasets.clip_folders import CLIP_FRAMES, CLIP_SIZE, clip_folders
from experiments.datasets.moving_digits import (
    CANVAS,
    DIRECTIONS,
    FRAMES,
    build_moving_digits,
)
from experiments.tasks.examples import random_clips
from experiments.tasks.registry import Task, register_task, validation_examples

TUBE, PATCH, EMBED_DIM = 2, 4, 64


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
    example=validation_examples(build_moving_digits),
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
        example=random_clips(CLIP_FRAMES, CLIP_SIZE, _classes),
    ))
