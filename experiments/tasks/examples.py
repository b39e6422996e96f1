"""``Task.example`` for tasks whose data is on disk: random inputs and targets with a real
dataset's shapes and dtypes, so every task builds, runs forward and backward, and trains one
step with every control in the registry test without the data. (Embedded tasks use their
validation set's first samples: ``registry.validation_examples``.)"""

from __future__ import annotations

from collections.abc import Callable

import torch

from encoders.visual.vectornet import FEATURES, VALID

Example = Callable[[int], tuple]


def _text(n: int, words: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, length) word ids and mask, the second half of every text padding."""
    mask = torch.arange(length).expand(n, -1) < length // 2
    return torch.randint(2, words, (n, length)) * mask, mask


def random_images(size: int, num_classes: int) -> Example:
    """Normalised (n, 3, size, size) images and class labels."""
    return lambda n: (torch.randn(n, 3, size, size), torch.randint(0, num_classes, (n,)))


def random_clips(frames: int, size: int, num_classes: int) -> Example:
    """Normalised (n, 3, frames, size, size) clips and class labels."""
    return lambda n: (torch.randn(n, 3, frames, size, size), torch.randint(0, num_classes, (n,)))


def random_clouds(points: int, num_classes: int) -> Example:
    """(n, points, 4) clouds (x, y, z, object flag) and class labels."""
    def example(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        flag = (torch.rand(n, points, 1) > 0.2).float()
        return torch.cat([torch.randn(n, points, 3), flag], -1), torch.randint(0, num_classes, (n,))

    return example


def random_scenes(polylines: int, vectors: int, future: int) -> Example:
    """((n, polylines, vectors, FEATURES) polylines, their mask), (n, future, 2) futures; half
    of the polylines are padding, as in a sparse scene."""
    def example(n: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        lines = torch.randn(n, polylines, vectors, FEATURES)
        lines[..., VALID] = 1.0
        valid = torch.arange(polylines).expand(n, -1) < polylines // 2
        return (lines, valid), torch.randn(n, future, 2)

    return example


def random_answered_images(size: int, words: int, length: int, answers: int) -> Example:
    """(image, question ids, mask) and soft answer scores (n, answers)."""
    def example(n: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return (torch.randn(n, 3, size, size), *_text(n, words, length)), torch.rand(n, answers)

    return example


def random_captioned_images(size: int, words: int, length: int) -> Example:
    """(image, caption ids, mask) pairs, each caption of its own image (targets 0..n-1)."""
    def example(n: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return (torch.randn(n, 3, size, size), *_text(n, words, length)), torch.arange(n)

    return example


def random_answered_clouds(points: int, words: int, length: int, answers: int) -> Example:
    """(cloud (n, points, 4), question ids, mask) and multi-hot answer rows (n, answers)."""
    def example(n: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        clouds = random_clouds(points, 1)(n)[0]
        scores = (torch.rand(n, answers) > 0.99).float()
        return (clouds, *_text(n, words, length)), scores

    return example
