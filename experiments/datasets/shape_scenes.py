"""Rendered scenes of coloured shapes: the embedded data of the VQA and retrieval tasks.

A scene is 2-4 shapes (square, circle, triangle) in red, green, blue or yellow on a black
32x32 canvas, each (colour, shape) at most once, at random non-overlapping places and sizes.
Everything is drawn with numpy from a fixed seed, so every trial sees the same data; train
and validation are different draws. Each scene keeps its object records (colour, shape,
centre, half-size) next to the image, so questions and captions are computed from the
records and tests can check every answer against them.

The background is black and every colour has a channel at full intensity, so "which patches
hold an object" is read off the image itself (``object_patches``), as digits does with ink:
that is what the information-filtering probe calls informative.

Questions (``make_vqa``) come in seven kinds (colour, shape, three counts, left-of yes/no,
colour of the shape left of another), each kind's answers in turn: the answer is fixed first
and scenes are drawn until one admits a question of that kind with that answer. So no
constant answer per kind beats 1/(number of answers of the kind) by more than rounding, and a
model must look at the image to do better. (A "what color is the shape left of the X?"
question is asked only where exactly one shape is left of X, which makes that shape the
leftmost one: the kind tests reading positions more than finding X.)

Captions (``make_captioned``) describe a two-shape scene by the relation along its dominant
axis, in two phrasings ("a red square left of a blue circle" / "a blue circle right of a red
square").
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

SIZE = 32  # canvas side, pixels
PATCH = 8  # the encoder's token grid: (SIZE / PATCH)^2 = 16 image tokens
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
           "yellow": (1.0, 1.0, 0.0)}
SHAPES = ("square", "circle", "triangle")
MIN_HALF, MAX_HALF = 3.5, 5.5  # half-size of a shape's bounding box, pixels
GAP = 1.0  # free pixels between two shapes' bounding boxes
MARGIN = 3.0  # centres closer than this along an axis are neither left nor right (above...)
INK = 0.25  # a patch with a pixel above this in any channel shows part of a shape


class Shape(NamedTuple):
    """One object of a scene: centre (x right, y down) and half-size in pixels."""

    colour: str
    shape: str
    x: float
    y: float
    half: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


Scene = tuple[Shape, ...]


def draw_layout(rng: np.random.Generator, n: int, tries: int = 50) -> Scene:
    """``n`` shapes with distinct (colour, shape), bounding boxes ``GAP`` apart: each shape
    at the first of ``tries`` random places (and sizes) that keeps clear of the others."""
    kinds = list(itertools.product(COLOURS, SHAPES))
    while True:
        picks = rng.choice(len(kinds), size=n, replace=False)
        half = rng.uniform(MIN_HALF, MAX_HALF, (n, tries))
        x, y = rng.uniform(half, SIZE - half), rng.uniform(half, SIZE - half)  # (n, tries)
        placed: list[Shape] = []
        for i, k in enumerate(picks):
            clear = np.ones(tries, bool)
            for o in placed:
                reach = half[i] + o.half + GAP
                clear &= (abs(x[i] - o.x) >= reach) | (abs(y[i] - o.y) >= reach)
            if not clear.any():
                break  # no room left: draw the scene again
            j = int(clear.argmax())
            placed.append(Shape(*kinds[k], float(x[i, j]), float(y[i, j]), float(half[i, j])))
        if len(placed) == n:
            return tuple(placed)


_CENTRES = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # (2, SIZE, SIZE): pixel centres, (y, x)


def shape_mask(obj: Shape) -> np.ndarray:
    """(SIZE, SIZE) bool: the pixels whose centre lies inside the shape."""
    yy, xx = _CENTRES
    dx, dy = xx - obj.x, yy - obj.y
    if obj.shape == "circle":
        return dx**2 + dy**2 <= obj.half**2
    if obj.shape == "square":  # slightly inside the box: about a circle's area
        return np.maximum(abs(dx), abs(dy)) <= 0.9 * obj.half
    if obj.shape == "triangle":  # apex up, base as wide as the box
        return (abs(dy) <= obj.half) & (abs(dx) <= (dy + obj.half) / 2)
    raise ValueError(f"unknown shape {obj.shape!r}; valid: {', '.join(SHAPES)}")


def render(scene: Scene) -> np.ndarray:
    """(3, SIZE, SIZE) float32 in [0, 1]: the shapes on black."""
    image = np.zeros((3, SIZE, SIZE), np.float32)
    for obj in scene:
        image[:, shape_mask(obj)] = np.asarray(COLOURS[obj.colour], np.float32)[:, None]
    return image


def object_patches(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, SIZE, SIZE) -> (B, n_patches) bool, in row-major patch order: patches showing
    part of a shape (a pixel brighter than ``INK`` in any channel)."""
    b, _, h, w = images.shape
    patches = images.amax(1).reshape(b, h // PATCH, PATCH, w // PATCH, PATCH)
    return (patches.amax(dim=(2, 4)) > INK).reshape(b, -1)


# --- questions ----------------------------------------------------------------------------

NUMBERS = ("0", "1", "2", "3", "4")
ANSWERS = (*COLOURS, *SHAPES, *NUMBERS, "yes", "no")
KIND_ANSWERS = {
    "color": tuple(COLOURS),  # what color is the circle?
    "shape": SHAPES,  # what shape is the red object?
    "count_color": ("0", "1", "2"),  # how many blue objects are there?
    "count_shape": ("0", "1", "2"),  # how many circles are there?
    "count_all": ("2", "3", "4"),  # how many shapes are there?
    "left_of": ("yes", "no"),  # is the red square left of the green circle?
    "color_left_of": tuple(COLOURS),  # what color is the shape left of the blue triangle?
}
KINDS = tuple(KIND_ANSWERS)


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str


def left_of(a: Shape, b: Shape) -> bool | None:
    """Whether ``a`` is left of ``b``; None when their centres are within ``MARGIN``."""
    if abs(a.x - b.x) < MARGIN:
        return None
    return a.x < b.x


def ask(scene: Scene, kind: str) -> list[QA]:
    """Every unambiguous question of ``kind`` about ``scene``, with its answer."""
    if kind not in KIND_ANSWERS:
        raise ValueError(f"unknown question kind {kind!r}; valid: {', '.join(KINDS)}")
    colours = Counter(o.colour for o in scene)
    shapes = Counter(o.shape for o in scene)
    out: list[QA] = []
    if kind == "color":
        out = [QA(f"what color is the {o.shape}?", o.colour, kind)
               for o in scene if shapes[o.shape] == 1]
    elif kind == "shape":
        out = [QA(f"what shape is the {o.colour} object?", o.shape, kind)
               for o in scene if colours[o.colour] == 1]
    elif kind == "count_color":
        out = [QA(f"how many {c} objects are there?", str(colours[c]), kind) for c in COLOURS]
    elif kind == "count_shape":
        out = [QA(f"how many {s}s are there?", str(shapes[s]), kind) for s in SHAPES]
    elif kind == "count_all":
        out = [QA("how many shapes are there?", str(len(scene)), kind)]
    elif kind == "left_of":
        for a, b in itertools.permutations(scene, 2):
            side = left_of(a, b)
            if side is not None:
                out.append(QA(f"is the {a.name} left of the {b.name}?", "yes" if side else "no",
                              kind))
    elif kind == "color_left_of":
        for ref in scene:
            sides = [left_of(o, ref) for o in scene if o is not ref]
            if None not in sides and sides.count(True) == 1:  # exactly one shape to its left
                left = next(o for o in scene if o is not ref and left_of(o, ref))
                out.append(QA(f"what color is the shape left of the {ref.name}?", left.colour,
                              kind))
    return [qa for qa in out if qa.answer in KIND_ANSWERS[kind]]


def all_questions() -> list[str]:
    """Every question text the templates can produce (the embedded question vocabulary)."""
    names = [f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES)]
    texts = [f"what color is the {s}?" for s in SHAPES]
    texts += [f"what shape is the {c} object?" for c in COLOURS]
    texts += [f"how many {c} objects are there?" for c in COLOURS]
    texts += [f"how many {s}s are there?" for s in SHAPES]
    texts += ["how many shapes are there?"]
    texts += [f"is the {a} left of the {b}?" for a, b in itertools.permutations(names, 2)]
    texts += [f"what color is the shape left of the {n}?" for n in names]
    return texts


def make_vqa(n: int, seed: int) -> tuple[np.ndarray, list[QA], list[Scene]]:
    """(n, 3, SIZE, SIZE) images, one question each, and the scenes' object records.

    Kinds take turns (sample i is of kind ``KINDS[i % len(KINDS)]``), and so do the answers within a
    kind: the answer is fixed first, and scenes are drawn until one admits a question of the
    kind with that answer. Answers are thus balanced per kind to within one sample."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 3, SIZE, SIZE), np.float32)
    qas: list[QA] = []
    scenes: list[Scene] = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        answers = KIND_ANSWERS[kind]
        target = answers[(i // len(KINDS)) % len(answers)]
        while True:
            count = int(target) if kind == "count_all" else int(rng.integers(2, 5))
            scene = draw_layout(rng, count)
            fits = [qa for qa in ask(scene, kind) if qa.answer == target]
            if fits:
                break
        qas.append(fits[rng.integers(len(fits))])
        scenes.append(scene)
        images[i] = render(scene)
    return images, qas, scenes


def constant_answer_accuracy(qas: list[QA]) -> float:
    """Accuracy of the best constant answer per question kind: the chance level of a model
    that reads the question but not the image."""
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for qa in qas:
        by_kind[qa.kind][qa.answer] += 1
    return sum(max(c.values()) for c in by_kind.values()) / len(qas)


# --- captions -----------------------------------------------------------------------------

OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
PHRASE = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class Captioned:
    """A two-shape scene, its canonical description (first object left of / above the second)
    and its two captions."""

    scene: Scene
    canonical: tuple[str, str, str]  # (first name, relation, second name)
    captions: tuple[str, str]


def relation(a: Shape, b: Shape) -> str | None:
    """Where ``a`` is relative to ``b`` along the dominant axis (y grows downwards); None
    when neither axis dominates by ``MARGIN``."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy) + MARGIN:
        return "left" if dx < 0 else "right"
    if abs(dy) >= abs(dx) + MARGIN:
        return "above" if dy < 0 else "below"
    return None


def describe(scene: Scene) -> Captioned | None:
    a, b = scene
    rel = relation(a, b)
    if rel is None:
        return None
    if rel in ("right", "below"):
        a, b, rel = b, a, OPPOSITE[rel]
    captions = (f"a {a.name} {PHRASE[rel]} a {b.name}",
                f"a {b.name} {PHRASE[OPPOSITE[rel]]} a {a.name}")
    return Captioned(scene, (a.name, rel, b.name), captions)


def all_captions() -> list[str]:
    """Every caption text the templates can produce (the embedded caption vocabulary)."""
    names = [f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES)]
    return [f"a {a} {phrase} a {b}" for a, b in itertools.permutations(names, 2)
            for phrase in PHRASE.values()]


def distinct_descriptions() -> int:
    """How many canonical descriptions exist: ordered pairs of distinct objects, two axes."""
    kinds = len(COLOURS) * len(SHAPES)
    return kinds * (kinds - 1) * 2


def make_captioned(n: int, seed: int, distinct: bool = False
                   ) -> tuple[np.ndarray, list[Captioned]]:
    """(n, 3, SIZE, SIZE) two-shape images and their descriptions; ``distinct``: no two
    scenes share a canonical description (a validation set where recall is well defined)."""
    if distinct and n > distinct_descriptions():
        raise ValueError(f"n={n} distinct scenes asked for; valid: at most "
                         f"{distinct_descriptions()}")
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 3, SIZE, SIZE), np.float32)
    out: list[Captioned] = []
    seen: set[tuple[str, str, str]] = set()
    while len(out) < n:
        item = describe(draw_layout(rng, 2))
        if item is None or (distinct and item.canonical in seen):
            continue
        seen.add(item.canonical)
        images[len(out)] = render(item.scene)
        out.append(item)
    return images, out
