"""Image-text retrieval: a dual encoder whose image and caption streams pass through the same
frozen block (``encoders.visual.multimodal.DualEncoder``), on captioned shape scenes
(``shape-retrieval``, embedded) or Flickr30K / COCO (Karpathy splits, ``--data-dir``); CLIP's
contrastive loss, recall@1/5/10 both ways (``experiments.objectives.retrieval``).
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.visual.multimodal import VIT_S16, DualEncoder
from encoders.visual.vit import insert_after_last_block
from experiments.datasets import shape_scenes as scenes
from experiments.datasets.image_files import IMAGE_SIZE
from experiments.datasets.karpathy import (
    KARPATHY,
    KARPATHY_CAPTION_LEN,
    MAX_CAPTION_WORDS,
    karpathy_task,
)
from experiments.datasets.shape_captions import (
    CAPTION_LEN,
    CAPTIONS_PER_IMAGE,
    N_VAL,
    build_shape_retrieval,
    shape_caption_vocab,
)
from experiments.objectives.retrieval import CONTRASTIVE, random_rmean
from experiments.tasks.examples import random_captioned_images
from experiments.tasks.registry import Task, register_task, validation_examples

EMBED_DIM = 64
KARPATHY_EMBED_DIM = 256
KARPATHY_CAPTIONS = 5  # per validation image (nominal), for the chance level


def shape_retrieval_model(block: nn.Module | None) -> nn.Module:
    """16 image tokens (conv stem, 8x8 cells) or 8 caption tokens per stream, width 64."""
    model = DualEncoder(embed_dim=EMBED_DIM, img_size=scenes.SIZE, patch_size=scenes.PATCH,
                        dim=EMBED_DIM, num_heads=4, visual_depth=1, joint_depth=2,
                        vocab_size=len(shape_caption_vocab()), max_text_len=CAPTION_LEN,
                        mlp_ratio=2.0, conv_stem=True)
    return insert_after_last_block(model, block)


def image_stream_informative(inputs: tuple[torch.Tensor, ...] | list[torch.Tensor]
                             ) -> torch.Tensor:
    """(B, n_patches): patches showing a shape. The probe's hooks keep the model's last pass
    through ``blocks``, the image stream ``[cls, patches]`` (``DualEncoder.forward``)."""
    return scenes.object_patches(inputs[0])


def karpathy_model(block: nn.Module | None) -> nn.Module:
    """ViT-S/16 at 224 (10 image-only blocks, 2 shared blocks, then the frozen block), 32
    caption tokens; the word embedding is sized to the vocabulary cap (10,002 ids)."""
    model = DualEncoder(embed_dim=KARPATHY_EMBED_DIM, img_size=IMAGE_SIZE, **VIT_S16,
                        visual_depth=10, joint_depth=2, vocab_size=MAX_CAPTION_WORDS + 2,
                        max_text_len=KARPATHY_CAPTION_LEN)
    return insert_after_last_block(model, block)


register_task(Task(
    name="shape-retrieval",
    description="captioned two-shape scenes (embedded): image <-> caption recall@1/5/10, "
                "dual encoder sharing the frozen block",
    visual_dim=EMBED_DIM,
    build_data=build_shape_retrieval,
    build_model=shape_retrieval_model,
    metric="val_rmean",
    mode="max",
    informative_tokens=image_stream_informative,
    chance=random_rmean([CAPTIONS_PER_IMAGE] * N_VAL),
    objective=CONTRASTIVE,
    example=validation_examples(build_shape_retrieval, step=CAPTIONS_PER_IMAGE),
))

for _task, (_json, _filepath, _n_val) in KARPATHY.items():
    _build, _check = karpathy_task(_task)
    register_task(Task(
        name=_task,
        description=f"{_task} Karpathy split at 224, ViT-S/16 width, dual encoder sharing the "
                    "frozen block",
        visual_dim=VIT_S16["dim"],
        build_data=_build,
        build_model=karpathy_model,
        metric="val_rmean",
        mode="max",
        check_data=_check,
        chance=random_rmean([KARPATHY_CAPTIONS] * _n_val),
        objective=CONTRASTIVE,
        example=random_captioned_images(IMAGE_SIZE, MAX_CAPTION_WORDS + 2,
                                        KARPATHY_CAPTION_LEN),
    ))
