"""Real images read from files at the joint encoders' resolution (VQAv2, Flickr30K, COCO).

Resized to 224x224 without cropping or flipping (a crop could cut out, a flip mirror, what a
question or caption says is "left of" something), normalised with ImageNet's mean and std.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

IMAGE_SIZE = 224


def image_transform():
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((IMAGE_SIZE, IMAGE_SIZE),
                          interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


class ImageFiles(Dataset):
    """Image i of a split, read and resized to 224 when asked for."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.transform = image_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))
