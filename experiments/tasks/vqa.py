"""Visual question answering: the frozen block over the joint image + question sequence
(``encoders.visual.multimodal.VQAModel``), on templated questions about shape scenes
(``shape-vqa``, embedded) or VQAv2 (``--data-dir``).

Both are classification over an answer vocabulary with soft targets, scored by
``ANSWER_SCORES`` (binary cross-entropy per answer; ``val_acc`` is VQA accuracy). The
embedded task has one correct answer per question (exact-match accuracy); its chance level
is the validation accuracy of the best constant answer per question kind
(``shape_scenes.constant_answer_accuracy``), which the answer balancing keeps near 1/3.
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.visual.multimodal import VIT_S16, VQAModel
from encoders.visual.vit import insert_after_last_block
from experiments.datasets import shape_scenes as scenes
from experiments.datasets.image_files import IMAGE_SIZE
from experiments.datasets.shape_vqa import (
    QUESTION_LEN,
    SHAPE_VQA_CHANCE,
    build_shape_vqa,
    shape_question_vocab,
)
from experiments.datasets.vqav2 import (
    MAX_QUESTION_WORDS,
    NUM_ANSWERS,
    VQAV2_CHANCE,
    VQAV2_QUESTION_LEN,
    build_vqav2,
    vqav2_check,
)
from experiments.objectives.answer_scores import ANSWER_SCORES
from experiments.tasks.examples import random_answered_images
from experiments.tasks.registry import Task, register_task, validation_examples

EMBED_DIM = 64


def shape_vqa_model(block: nn.Module | None) -> nn.Module:
    """16 image tokens (conv stem, 8x8 cells) + 10 question tokens at width 64."""
    model = VQAModel(num_answers=len(scenes.ANSWERS), img_size=scenes.SIZE,
                     patch_size=scenes.PATCH, dim=EMBED_DIM, num_heads=4, visual_depth=1,
                     joint_depth=2, vocab_size=len(shape_question_vocab()),
                     max_text_len=QUESTION_LEN, mlp_ratio=2.0, conv_stem=True)
    return insert_after_last_block(model, block)


def joint_informative(inputs: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    """(B, n_patches + L) bool over the joint sequence after the class token: image patches
    showing a shape; question tokens are not informative."""
    image, ids, _ = inputs
    text = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    return torch.cat([scenes.object_patches(image), text], dim=1)


def joint_valid(inputs: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    """(B, n_patches + L) bool: every image patch, and the question's real tokens."""
    image, _, mask = inputs
    b, _, h, w = image.shape
    patches = torch.ones(b, (h // scenes.PATCH) * (w // scenes.PATCH), dtype=torch.bool,
                         device=mask.device)
    return torch.cat([patches, mask.bool()], dim=1)


def vqav2_model(block: nn.Module | None) -> nn.Module:
    """ViT-S/16 at 224 (196 image tokens, width 384): 10 image-only blocks, then 2 joint
    blocks over the 196 + 20 tokens, the frozen block after them. The word embedding and
    the classifier are sized to the caps (10,002 ids, 3129 answers) so the model is built
    before the data: a smaller vocabulary leaves rows unused."""
    model = VQAModel(num_answers=NUM_ANSWERS, img_size=IMAGE_SIZE, **VIT_S16, visual_depth=10,
                     joint_depth=2, vocab_size=MAX_QUESTION_WORDS + 2,
                     max_text_len=VQAV2_QUESTION_LEN)
    return insert_after_last_block(model, block)


register_task(Task(
    name="shape-vqa",
    description="templated questions about rendered coloured-shape scenes (embedded): "
                "colour, shape, count, left-of; joint image + question sequence",
    visual_dim=EMBED_DIM,
    build_data=build_shape_vqa,
    build_model=shape_vqa_model,
    metric="val_acc",
    informative_tokens=joint_informative,
    valid_tokens=joint_valid,
    chance=SHAPE_VQA_CHANCE,
    objective=ANSWER_SCORES,
    example=validation_examples(build_shape_vqa),
))

register_task(Task(
    name="vqav2",
    description="VQAv2 (official JSON + COCO images) at 224, ViT-S/16 width, 3129 answers, "
                "joint image + question sequence",
    visual_dim=VIT_S16["dim"],
    build_data=build_vqav2,
    build_model=vqav2_model,
    metric="val_acc",
    check_data=lambda data_dir: vqav2_check(data_dir) and None,
    chance=VQAV2_CHANCE,
    objective=ANSWER_SCORES,
    example=random_answered_images(IMAGE_SIZE, MAX_QUESTION_WORDS + 2, VQAV2_QUESTION_LEN,
                                   NUM_ANSWERS),
))
