"""Visual question answering: templated questions about shape scenes (embedded) and VQAv2
(``--data-dir``), with the frozen block over the joint image + question sequence.

Both are classification over an answer vocabulary with soft targets, scored by
``ANSWER_SCORES`` (binary cross-entropy per answer; ``val_acc`` is VQA accuracy). The
embedded task has one correct answer per question (a one-hot row: exact-match accuracy);
its chance level is the validation accuracy of the best constant answer per question kind
(``shape_scenes.constant_answer_accuracy``), which the answer balancing keeps near 1/3.

VQAv2's layout under ``--data-dir`` is the official one: the question and annotation JSON
files of train2014 and val2014 and the COCO images in ``train2014/`` and ``val2014/``. Each
question's 10 annotator answers are normalised (lower case, punctuation and articles
dropped, number words as digits); the answer vocabulary is the 3129 most frequent
``multiple_choice_answer``s of train (the standard size), and an answer's target score is
min(#annotators who gave it / 3, 1). Questions none of whose answers are in the vocabulary
stay in both splits (a zero target row; on val they count as wrong, as they must). Images
are resized to 224x224 without cropping or flipping, which could cut out or mirror what a
question asks about ("what is left of ...").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.data import Dataset

from encoders.multimodal import VQAModel
from encoders.text import WordVocab
from encoders.vit import insert_after_last_block
from experiments.objectives import ANSWER_SCORES
from experiments.tasks import shape_scenes as scenes
from experiments.tasks.registry import DataError, Task, data_root, register_task

# --- the embedded shape-scene questions ---------------------------------------------------

N_TRAIN, N_VAL, TRAIN_SEED, VAL_SEED = 2800, 700, 11, 12  # 400 and 100 per kind
QUESTION_LEN = 10  # the longest question has 10 words
EMBED_DIM = 64
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


def shape_vqa_split(n: int, seed: int) -> scenes.InputsDataset:
    images, qas, _ = scenes.make_vqa(n, seed)
    ids, mask, scores = encode_questions(qas)
    return scenes.InputsDataset((torch.from_numpy(images), ids, mask), scores)


@cache
def _shape_vqa() -> tuple[scenes.InputsDataset, scenes.InputsDataset]:
    return shape_vqa_split(N_TRAIN, TRAIN_SEED), shape_vqa_split(N_VAL, VAL_SEED)


def build_shape_vqa(data_dir: str | None = None
                    ) -> tuple[scenes.InputsDataset, scenes.InputsDataset]:
    """Embedded: ``data_dir`` is not used."""
    return _shape_vqa()


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


# --- VQAv2 ----------------------------------------------------------------------------------

NUM_ANSWERS = 3129
MAX_QUESTION_WORDS = 10_000
VQAV2_QUESTION_LEN = 20
IMAGE_SIZE, VIT_PATCH, VIT_DIM = 224, 16, 384  # ViT-S/16 width
# About the VQA accuracy of answering "yes" to everything (Goyal et al. 2017, prior baseline).
VQAV2_CHANCE = 0.26
SPLITS = {"train": "train2014", "val": "val2014"}
VQAV2_LAYOUT = ("v2_OpenEnded_mscoco_{train,val}2014_questions.json, "
                "v2_mscoco_{train,val}2014_annotations.json and images in "
                "train2014/ and val2014/ (COCO_<split>2014_<image_id:012d>.jpg)")


def question_file(split: str) -> str:
    return f"v2_OpenEnded_mscoco_{SPLITS[split]}_questions.json"


def annotation_file(split: str) -> str:
    return f"v2_mscoco_{SPLITS[split]}_annotations.json"


def image_path(root: Path, split: str, image_id: int) -> Path:
    name = SPLITS[split]
    return root / name / f"COCO_{name}_{image_id:012d}.jpg"


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(answer: str) -> str:
    """'Two dogs.' -> '2 dogs'; "It's the red one!" -> 'its red 1'. A simplified form of the
    official VQA normalisation: lower case, apostrophes dropped, other punctuation a space,
    number words as digits, articles dropped."""
    text = _PUNCT.sub(" ", answer.lower().replace("'", ""))
    return " ".join(_NUMBER_WORDS.get(w, w) for w in text.split() if w not in _ARTICLES)


def answer_scores(answers: list[str]) -> dict[str, float]:
    """The annotators' (normalised) answers -> {answer: min(count / 3, 1)}."""
    counts = Counter(normalize_answer(a) for a in answers)
    return {a: min(c / 3, 1.0) for a, c in counts.items()}


def vqav2_check(data_dir: str | Path | None) -> Path:
    root = data_root("vqav2", data_dir, VQAV2_LAYOUT)
    wanted = [f(s) for s in SPLITS for f in (question_file, annotation_file)]
    missing = [n for n in wanted if not (root / n).is_file()]
    missing += [f"{d}/" for d in SPLITS.values() if not (root / d).is_dir()]
    if missing:
        raise DataError(f"--data-dir {str(data_dir)!r}: missing {', '.join(missing)} for task "
                        f"'vqav2'; expected {VQAV2_LAYOUT}")
    return root


def read_vqav2(root: Path, split: str) -> list[tuple[int, str, dict[str, float]]]:
    """(image id, question, {answer: score}) per question of ``split``."""
    questions = json.loads((root / question_file(split)).read_text())["questions"]
    annotations = json.loads((root / annotation_file(split)).read_text())["annotations"]
    by_id = {a["question_id"]: a for a in annotations}
    out = []
    for q in questions:
        ann = by_id.get(q["question_id"])
        if ann is None:
            raise DataError(f"{root / annotation_file(split)}: no annotation for question "
                            f"{q['question_id']}")
        out.append((q["image_id"], q["question"],
                    answer_scores([a["answer"] for a in ann["answers"]])))
    return out


def answer_vocabulary(root: Path, size: int = NUM_ANSWERS) -> list[str]:
    """The ``size`` most frequent normalised ``multiple_choice_answer``s of train."""
    annotations = json.loads((root / annotation_file("train")).read_text())["annotations"]
    counts = Counter(normalize_answer(a["multiple_choice_answer"]) for a in annotations)
    return [a for a, _ in counts.most_common(size)]


def image_transform():
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((IMAGE_SIZE, IMAGE_SIZE),
                          interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


class VQAv2Dataset(Dataset):
    """((image (3, 224, 224), ids (L,), mask (L,)), scores (NUM_ANSWERS,)); images read
    lazily."""

    def __init__(self, root: Path, split: str, items: list[tuple[int, str, dict[str, float]]],
                 vocab: WordVocab, answers: list[str]) -> None:
        self.root, self.split, self.items, self.vocab = root, split, items, vocab
        self.answer_index = {a: i for i, a in enumerate(answers)}
        self.transform = image_transform()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        from PIL import Image

        image_id, question, scores = self.items[i]
        with Image.open(image_path(self.root, self.split, image_id)) as img:
            image = self.transform(img.convert("RGB"))
        ids, mask = self.vocab.encode(question, VQAV2_QUESTION_LEN)
        target = torch.zeros(NUM_ANSWERS)
        for answer, score in scores.items():
            if answer in self.answer_index:
                target[self.answer_index[answer]] = score
        return (image, ids, mask), target


@cache
def _vqav2(data_dir: str) -> tuple[VQAv2Dataset, VQAv2Dataset]:
    root = vqav2_check(data_dir)
    answers = answer_vocabulary(root)
    train, val = read_vqav2(root, "train"), read_vqav2(root, "val")
    vocab = WordVocab.build((q for _, q, _ in train), max_size=MAX_QUESTION_WORDS)
    return (VQAv2Dataset(root, "train", train, vocab, answers),
            VQAv2Dataset(root, "val", val, vocab, answers))


def build_vqav2(data_dir: str | Path | None = None) -> tuple[VQAv2Dataset, VQAv2Dataset]:
    vqav2_check(data_dir)
    return _vqav2(str(data_dir))


def vqav2_model(block: nn.Module | None) -> nn.Module:
    """ViT-S/16 at 224 (196 image tokens, width 384): 10 image-only blocks, then 2 joint
    blocks over the 196 + 20 tokens, the frozen block after them. The word embedding and
    the classifier are sized to the caps (10,002 ids, 3129 answers) so the model is built
    before the data: a smaller vocabulary leaves rows unused."""
    model = VQAModel(num_answers=NUM_ANSWERS, img_size=IMAGE_SIZE, patch_size=VIT_PATCH,
                     dim=VIT_DIM, num_heads=6, visual_depth=10, joint_depth=2,
                     vocab_size=MAX_QUESTION_WORDS + 2, max_text_len=VQAV2_QUESTION_LEN)
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
))

register_task(Task(
    name="vqav2",
    description="VQAv2 (official JSON + COCO images) at 224, ViT-S/16 width, 3129 answers, "
                "joint image + question sequence",
    visual_dim=VIT_DIM,
    build_data=build_vqav2,
    build_model=vqav2_model,
    metric="val_acc",
    check_data=lambda data_dir: vqav2_check(data_dir) and None,
    chance=VQAV2_CHANCE,
    objective=ANSWER_SCORES,
))
