"""3D question answering: procedurally generated scenes of primitives (embedded) and
ScanQA / SQA3D-style questions on ScanNet scenes (from ``--data-dir``).

The paper's 3D VQA experiments (SQA3D, ScanQA) put the frozen LM block over the joint
point-cloud + question sequence; ``encoders.point_qa`` is that model. Answers are classes of
an answer vocabulary scored with one-hot (or multi-hot, for several accepted answers)
targets, so ``ANSWER_SCORES``'s ``val_acc`` is exact-match accuracy.

The embedded default, ``shape-scenes-3d``: a floor, a wall on one side of the scene centre
and 2-3 upright primitives of distinct shapes (each its own height) on 2-3 of the other three
sides (distance 1.5-2 m with jitter), the whole layout turned about the vertical axis by up to
30 degrees. Questions come from templates:

- situated (as SQA3D, the situation stated in the question): "i am facing the wall. what is
  behind me?" / "... on my left?" / "... on my right?", and "my back is to the wall. what is
  in front of me?" / "... on my left?" / "... on my right?";
- count: "how many objects are in the room?";
- exists: "is there a torus?" (yes/no, balanced);
- tallest: "what shape is the tallest object?".

Convention for the situated questions: right-handed frame, z up; the speaker stands at the
scene centre facing the wall (direction ``d`` in the floor plane) or with the back to it
(``-d``). *Behind* is the object in direction ``-d``, *left* the one in direction ``d``
turned 90 degrees counter-clockwise seen from above, ``(-d_y, d_x)`` (facing +x, left is
+y), *right* ``(d_y, -d_x)``. Every answer is computed from the object positions and heights,
so a model that ignores the points can do no better than the answer prior, which is what
``chance`` is: the validation accuracy of the best constant answer per distinct question
text. (A model that sees which objects are there but not where scores 1/#objects on the
situated questions, about 0.41: ``layout_blind_situated``.)

Why the wall and the limited turn, rather than "i am facing the cube" in a freely turned
layout: measured on these 2 CPU cores, the model does not learn to ground a shape word in the
points and then look to the side of it within the budget of a sweep trial (situated accuracy
stays at the layout-blind 0.41 for 15 epochs); with the wall as the landmark and the scene
roughly axis-aligned (as ScanNet's aligned scans are) it does (0.60 after 12 epochs).

Every cloud is (N, 4): x, y, z and an object flag (1 on an object, 0 on floor and wall); the
encoder reads x, y, z, the flag marks the probe's informative tokens (patches centred on an
object). Scenes are generated from fixed seeds (train and validation different draws).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from encoders.point_encoder import farthest_point_sample
from encoders.point_qa import PointQuestionModel
from encoders.text import WordVocab
from encoders.vit import insert_after_last_block
from experiments.objectives import AnswerScores, forward, to_device
from experiments.tasks.pointcloud import _surface
from experiments.tasks.registry import DataError, Task, data_root, register_task

EMBED_DIM = 64
GROUPS = 16  # FPS patches (point tokens) per scene
K = 16  # points per patch
QUESTION_LEN = 12  # question words kept: the longest template has 12
TEXT_POSITIONS = 32  # the text embedding's positions: room for longer padding than the data's

# --- embedded scenes --------------------------------------------------------------------

POINTS = 512
FLOOR_POINTS = 80
WALL_POINTS = 64
# Sizes below are in metres; the cloud's coordinates are metres times this, which makes a
# patch's offsets a few tenths: the scale at which the patch embedding learns quickly (at a
# tenth of it, it does not learn to count the objects in hundreds of steps).
UNITS_PER_METRE = 1.6
FLOOR_HALF = 2.0  # half-width of the square floor (small: FPS spreads its centres by area)
WALL_DISTANCE, WALL_WIDTH, WALL_HEIGHT = 2.3, 2.4, 1.0
# (footprint radius, height) per shape: distinct heights, so "tallest" has one answer
SIZES = {"torus": (0.65, 0.4), "cube": (0.5, 0.9), "sphere": (0.6, 1.4), "cone": (0.6, 1.9),
         "cylinder": (0.45, 2.4)}
SHAPES = tuple(SIZES)
SITUATIONS = {"facing": "i am facing the wall.", "back": "my back is to the wall."}
RELATIONS = {"front": "in front of me", "behind": "behind me", "left": "on my left",
             "right": "on my right"}
COUNTS = (2, 3)
# The whole layout turns by up to this (radians) about z, each object by up to JITTER more:
# the scene stays roughly aligned with its axes (see the module docstring for why).
MAX_TURN = np.pi / 6
JITTER = 0.15
ANSWERS = (*SHAPES, *(str(c) for c in COUNTS), "yes", "no")
# one word that only the question type's template has: per-type accuracy reads it
TYPE_WORDS = {"situated": "wall", "count": "many", "exists": "there", "tallest": "tallest"}
QUESTIONS_PER_SCENE = {"situated": 3, "count": 1, "exists": 1, "tallest": 1}


@dataclass
class Scene:
    """Objects standing on the floor: their shapes, floor positions (n, 2) and heights (n,);
    ``wall``: the unit floor direction (2,) from the centre to the wall."""

    shapes: tuple[str, ...]
    positions: np.ndarray
    heights: np.ndarray
    wall: np.ndarray


def turn(direction: np.ndarray, relation: str) -> np.ndarray:
    """The floor direction of ``relation`` for a speaker facing ``direction`` (z up)."""
    x, y = direction
    if relation == "front":
        return np.array([x, y])
    if relation == "behind":
        return np.array([-x, -y])
    if relation == "left":  # counter-clockwise seen from above
        return np.array([-y, x])
    if relation == "right":
        return np.array([y, -x])
    raise ValueError(f"unknown relation {relation!r}; valid: {', '.join(RELATIONS)}")


def situated_answer(scene: Scene, situation: str, relation: str) -> str | None:
    """The object in ``relation`` to a speaker at the centre in ``situation`` (facing the
    wall, or with the back to it): the one within 45 degrees of that direction, or None when
    that side is empty (or is the wall)."""
    if situation not in SITUATIONS:
        raise ValueError(f"unknown situation {situation!r}; valid: {', '.join(SITUATIONS)}")
    facing = scene.wall if situation == "facing" else -scene.wall
    target = turn(facing, relation)
    best, best_cos = None, np.cos(np.pi / 4)
    for shape, p in zip(scene.shapes, scene.positions, strict=True):
        cos = float(p @ target / np.linalg.norm(p))
        if cos > best_cos:
            best, best_cos = shape, cos
    return best


def make_layout(rng: np.random.Generator) -> Scene:
    """A wall on one side of the centre (+x, before the turn), 2-3 distinct shapes on 2-3
    of the other three sides, the layout turned about z by up to ``MAX_TURN``."""
    n = int(rng.choice(COUNTS))
    shapes = tuple(str(s) for s in rng.choice(SHAPES, n, replace=False))
    turned = rng.uniform(-MAX_TURN, MAX_TURN)
    sides = 1 + rng.choice(3, n, replace=False)  # side 0 is the wall's
    angle = turned + sides * np.pi / 2 + rng.uniform(-JITTER, JITTER, n)
    dist = rng.uniform(1.5, 2.0, n)
    positions = np.stack([dist * np.cos(angle), dist * np.sin(angle)], 1)  # (n, 2)
    heights = np.array([SIZES[s][1] for s in shapes]) * rng.uniform(0.95, 1.05, n)
    return Scene(shapes, positions, heights, np.array([np.cos(turned), np.sin(turned)]))


def situated_question(situation: str, relation: str) -> str:
    return f"{SITUATIONS[situation]} what is {RELATIONS[relation]}?"


def ask(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(question, answer, type) triples about one scene, ``QUESTIONS_PER_SCENE`` of each."""
    out = []
    pairs = [(s, r) for s in SITUATIONS for r in RELATIONS if situated_answer(scene, s, r)]
    for i in rng.choice(len(pairs), QUESTIONS_PER_SCENE["situated"], replace=False):
        out.append((situated_question(*pairs[i]), situated_answer(scene, *pairs[i]),
                    "situated"))
    out.append(("how many objects are in the room?", str(len(scene.shapes)), "count"))
    present = rng.random() < 0.5
    pool = scene.shapes if present else [s for s in SHAPES if s not in scene.shapes]
    out.append((f"is there a {rng.choice(pool)}?", "yes" if present else "no", "exists"))
    out.append(("what shape is the tallest object?",
                scene.shapes[int(scene.heights.argmax())], "tallest"))
    return out


def render(scene: Scene, rng: np.random.Generator, points: int = POINTS) -> np.ndarray:
    """(points, 4): the floor, the wall and each object's surface (x, y, z, object flag: 1
    on objects, 0 on the floor and the wall), in metres times ``UNITS_PER_METRE``, shuffled."""
    floor = np.c_[rng.uniform(-FLOOR_HALF, FLOOR_HALF, (FLOOR_POINTS, 2)),
                  rng.normal(0, 0.01, FLOOR_POINTS)]
    along = np.array([-scene.wall[1], scene.wall[0]])  # the wall's horizontal direction
    u, h = rng.uniform(-0.5, 0.5, WALL_POINTS) * WALL_WIDTH, rng.uniform(0, WALL_HEIGHT,
                                                                         WALL_POINTS)
    wall = np.c_[WALL_DISTANCE * scene.wall + u[:, None] * along, h]
    parts = [np.c_[floor, np.zeros(FLOOR_POINTS)], np.c_[wall, np.zeros(WALL_POINTS)]]
    left = points - FLOOR_POINTS - WALL_POINTS
    counts = np.full(len(scene.shapes), left // len(scene.shapes))
    counts[-1] += left - counts.sum()
    for shape, pos, height, n in zip(scene.shapes, scene.positions, scene.heights, counts,
                                     strict=True):
        p = _surface(shape, int(n), rng)
        lo, hi = p.min(0), p.max(0)
        radius = SIZES[shape][0]
        p = np.c_[p[:, :2] / np.abs(p[:, :2]).max() * radius,
                  (p[:, 2] - lo[2]) / (hi[2] - lo[2]) * height]  # standing on the floor
        yaw = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(yaw), np.sin(yaw)
        p[:, :2] = p[:, :2] @ np.array([[c, s], [-s, c]]) + pos
        parts.append(np.c_[p + rng.normal(0, 0.01, p.shape), np.ones(int(n))])
    cloud = np.concatenate(parts)
    cloud[:, :3] *= UNITS_PER_METRE
    return cloud[rng.permutation(points)]


def make_scenes(n: int, seed: int) -> tuple[list[Scene], list[tuple[str, str, str]], list[int]]:
    """Layouts and their questions only (no points: cheap), and each question's scene."""
    rng = np.random.default_rng(seed)
    scenes, qa, scene_of = [], [], []
    for i in range(n):
        scene = make_layout(rng)
        scenes.append(scene)
        for item in ask(scene, rng):
            qa.append(item)
            scene_of.append(i)
    return scenes, qa, scene_of


def template_vocab() -> WordVocab:
    """Every word any template can produce, in a fixed order: the same ids in every trial,
    known before any data is drawn (the per-type metrics need the type words' ids)."""
    texts = ["how many objects are in the room", "what shape is the tallest object",
             *(situated_question(s, r) for s in SITUATIONS for r in RELATIONS),
             *(f"is there a {s}" for s in SHAPES)]
    return WordVocab.build(texts)


VOCAB = template_vocab()


class PointQADataset(Dataset):
    """Questions about shared scenes: item i is ((cloud (N, C), ids (L,), mask (L,)),
    scores (A,)); a scene's cloud is stored once, however many questions it has."""

    def __init__(self, clouds: torch.Tensor, scene_of: torch.Tensor, ids: torch.Tensor,
                 mask: torch.Tensor, scores: torch.Tensor) -> None:
        self.clouds, self.scene_of = clouds, scene_of
        self.ids, self.mask, self.scores = ids, mask, scores

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return (self.clouds[self.scene_of[i]], self.ids[i], self.mask[i]), self.scores[i]


def encode_questions(vocab: WordVocab, questions: Sequence[str],
                     max_len: int = QUESTION_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, max_len) ids and (M, max_len) masks."""
    pairs = [vocab.encode(q, max_len) for q in questions]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def one_hot_scores(answers: Sequence[Iterable[str]], index: dict[str, int],
                   width: int | None = None) -> torch.Tensor:
    """(M, width or len(index)): 1.0 on every accepted answer that is in the vocabulary."""
    scores = torch.zeros(len(answers), width or len(index))
    for row, accepted in enumerate(answers):
        for a in accepted:
            if a in index:
                scores[row, index[a]] = 1.0
    return scores


def make_dataset(n_scenes: int, seed: int) -> PointQADataset:
    scenes, qa, scene_of = make_scenes(n_scenes, seed)
    rng = np.random.default_rng(seed + 1_000_003)  # the points: a stream apart from layouts
    clouds = torch.tensor(np.stack([render(s, rng) for s in scenes]), dtype=torch.float32)
    ids, mask = encode_questions(VOCAB, [q for q, _, _ in qa])
    scores = one_hot_scores([[a] for _, a, _ in qa], {a: i for i, a in enumerate(ANSWERS)})
    return PointQADataset(clouds, torch.tensor(scene_of), ids, mask, scores)


TRAIN_SCENES, VAL_SCENES = 250, 200
TRAIN_SEED, VAL_SEED = 31, 32


@cache
def _scenes() -> tuple[PointQADataset, PointQADataset]:
    return make_dataset(TRAIN_SCENES, TRAIN_SEED), make_dataset(VAL_SCENES, VAL_SEED)


def build_scenes(data_dir: str | Path | None = None) -> tuple[PointQADataset, PointQADataset]:
    return _scenes()


def blind_accuracy(qa: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """The accuracy of the best constant answer per distinct question text, overall and per
    type: the most a model that ignores the scene can score on these questions."""
    by_question: dict[str, Counter] = defaultdict(Counter)
    for q, a, _ in qa:
        by_question[q][a] += 1
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for q, a, kind in qa:
        best = by_question[q].most_common(1)[0][0]
        for key in ("all", kind):
            hits[key][0] += a == best
            hits[key][1] += 1
    return {k: h / n for k, (h, n) in hits.items()}


def layout_blind_situated(scenes: Sequence[Scene], qa: Sequence[tuple[str, str, str]],
                          scene_of: Sequence[int]) -> float:
    """The expected situated accuracy of a model that knows which shapes a scene holds but
    not where: shapes take their sides at random, so each is the answer with 1/#objects."""
    shares = [1 / len(scenes[i].shapes) for (_, _, kind), i in zip(qa, scene_of, strict=True)
              if kind == "situated"]
    return float(np.mean(shares))


@cache
def chance_by_type() -> dict[str, float]:
    """``blind_accuracy`` of the validation questions (layouts only: no points drawn)."""
    return blind_accuracy(make_scenes(VAL_SCENES, VAL_SEED)[1])


# --- per-type metrics --------------------------------------------------------------------


class TypedAnswerScores(AnswerScores):
    """``AnswerScores`` plus ``val_acc_<type>`` per question type; a question's type is the
    type word its ids contain (``TYPE_WORDS``)."""

    def __init__(self, type_ids: dict[str, int]) -> None:
        self.type_ids = type_ids

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]:
        model.eval()
        total, acc, top5, n = 0.0, 0.0, 0.0, 0
        typed = {k: [0.0, 0] for k in self.type_ids}
        for x, scores in loader:
            x, scores = to_device(x, device), scores.to(device)
            logits = forward(model, x)
            total += self.loss(logits, scores).item() * len(scores)
            hit = scores.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)  # (B,)
            acc += hit.sum().item()
            k = min(5, logits.shape[-1])
            top5 += scores.gather(1, logits.topk(k, -1).indices).amax(-1).sum().item()
            n += len(scores)
            ids = x[1]
            for kind, word in self.type_ids.items():
                rows = (ids == word).any(-1)
                typed[kind][0] += hit[rows].sum().item()
                typed[kind][1] += int(rows.sum())
        return {"val_loss": total / n, "val_acc": acc / n, "val_top5_acc": top5 / n,
                **{f"val_acc_{k}": h / max(m, 1) for k, (h, m) in typed.items()}}


SCENE_OBJECTIVE = TypedAnswerScores({k: VOCAB.stoi[w] for k, w in TYPE_WORDS.items()})


# --- model, probe tokens ---------------------------------------------------------------


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


# --- real data: ScanQA / SQA3D layout ---------------------------------------------------

SCANQA_LAYOUT = ("ScanQA_v1.0_train.json and ScanQA_v1.0_val.json (or under qa/): lists of "
                 "{scene_id, question_id, question, answers[, situation]}, and "
                 "scannet_data/<scene_id>_aligned_vert.npy (or _vert.npy; N x 6+, xyz first; "
                 "optional <scene_id>_sem_label.npy)")
SCANQA_POINTS = 4096
SCANQA_GROUPS = 64
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


# --- registration -----------------------------------------------------------------------

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
))
