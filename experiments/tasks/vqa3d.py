"""3D question answering: point-cloud patch tokens and question tokens in one sequence through
the blocks and the frozen block (``encoders.visual.point_qa``), on procedural rooms with
situated questions (``shape-scenes-3d``, embedded) or ScanQA / SQA3D on ScanNet
(``--data-dir``). Answers are classes of an answer vocabulary scored with one-hot (or
multi-hot) targets, so ``val_acc`` is exact-match accuracy; the embedded task also reports
the accuracy per question type.

Every cloud is (N, 4): x, y, z and an object flag; the encoder reads x, y, z, the flag marks
the probe's informative tokens (patches centred on an object).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from encoders.visual.point_encoder import farthest_point_sample
from encoders.visual.point_qa import PointQuestionModel
from encoders.visual.vit import insert_after_last_block
from experiments.datasets.rooms3d import ANSWERS, TYPE_WORDS, VOCAB, build_scenes, chance_by_type
from experiments.datasets.scanqa import (
    MAX_ANSWERS,
    MAX_WORDS,
    SCANQA_POINTS,
    SCANQA_TEXT_LEN,
    build_scanqa,
    check_scanqa,
)
from experiments.objectives.answer_scores import AnswerScores, TypedAnswerScores
from experiments.tasks.examples import random_answered_clouds
from experiments.tasks.registry import Task, register_task, validation_examples

EMBED_DIM = 64
GROUPS = 16  # FPS patches (point tokens) per scene
K = 16  # points per patch
TEXT_POSITIONS = 32  # the text embedding's positions: room for longer padding than the data's
SCANQA_GROUPS = 64

SCENE_OBJECTIVE = TypedAnswerScores({k: VOCAB.stoi[w] for k, w in TYPE_WORDS.items()})


def model_builder(vocab_size: int, num_answers: int, groups: int,
                  max_len: int = TEXT_POSITIONS) -> Callable[[nn.Module | None], nn.Module]:
    def build_model(block: nn.Module | None) -> nn.Module:
        model = PointQuestionModel(vocab_size=vocab_size, num_answers=num_answers,
                                   max_len=max_len, groups=groups, k=K, embed_dim=EMBED_DIM)
        return insert_after_last_block(model, block)

    return build_model


def object_patches(groups: int) -> Callable[..., torch.Tensor]:
    def informative(inputs) -> torch.Tensor:
        """(clouds (B, N, 4), ids (B, L), mask) -> (B, G + L): patches centred on an object
        (the model's own FPS); question tokens are not scored."""
        clouds, ids = inputs[0], inputs[1]
        idx = farthest_point_sample(clouds[..., :3].float(), groups)
        on_object = clouds[torch.arange(len(clouds)).unsqueeze(1), idx, 3] > 0.5  # (B, G)
        return torch.cat([on_object, torch.zeros_like(ids, dtype=torch.bool)], dim=1)

    return informative


def real_tokens(groups: int) -> Callable[..., torch.Tensor]:
    def valid(inputs) -> torch.Tensor:
        """(B, G + L): every point token, the question's real words."""
        clouds, mask = inputs[0], inputs[2]
        points = torch.ones(len(clouds), groups, dtype=torch.bool, device=clouds.device)
        return torch.cat([points, mask.bool()], dim=1)

    return valid


SHAPE_SCENES_3D = register_task(Task(
    name="shape-scenes-3d",
    description="procedural 3D scenes of primitives with templated (situated) questions "
                "(embedded); point patches + question words through the blocks",
    visual_dim=EMBED_DIM,
    build_data=build_scenes,
    build_model=model_builder(len(VOCAB), len(ANSWERS), GROUPS),
    metric="val_acc",  # exact-match accuracy
    mode="max",
    informative_tokens=object_patches(GROUPS),
    valid_tokens=real_tokens(GROUPS),
    prefix_tokens=1,
    chance=chance_by_type()["all"],
    objective=SCENE_OBJECTIVE,
    example=validation_examples(build_scenes),
))

SCANQA = register_task(Task(
    name="scanqa",
    description="ScanQA / SQA3D questions on ScanNet scenes (4096 points), exact-match "
                "accuracy over the training answers",
    visual_dim=EMBED_DIM,
    build_data=build_scanqa,
    build_model=model_builder(MAX_WORDS, MAX_ANSWERS, SCANQA_GROUPS, SCANQA_TEXT_LEN),
    metric="val_acc",
    mode="max",
    informative_tokens=object_patches(SCANQA_GROUPS),
    valid_tokens=real_tokens(SCANQA_GROUPS),
    prefix_tokens=1,
    check_data=check_scanqa,
    chance=0.0,  # depends on the data (the most frequent answer's share); not known here
    objective=AnswerScores(),
    example=random_answered_clouds(SCANQA_POINTS, MAX_WORDS, SCANQA_TEXT_LEN, MAX_ANSWERS),
))
