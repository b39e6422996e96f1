"""(image, caption) pairs: every caption of every image one sample, its target the image's
index (as COCO's 5 captions per image make 5 pairs); shared by the retrieval datasets.

Training wants the pairs (a batch of pairs is the contrastive loss's batch). Validation
scores all images against all captions, so it reads the two apart: ``distinct_images`` holds
each image once (COCO's 5 captions would otherwise read and transform it 5 times) and the
captions are the in-memory ``ids`` / ``mask`` rows, no image read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from encoders.visual.text import WordVocab


class CaptionPairs(Dataset):
    """((image, ids, mask), image index) per caption; ``images`` is indexable (a tensor, or a
    dataset that reads and transforms image i)."""

    def __init__(self, images, image_index: torch.Tensor, ids: torch.Tensor,
                 mask: torch.Tensor) -> None:
        self.images, self.image_index, self.ids, self.mask = images, image_index, ids, mask

    def __len__(self) -> int:
        return len(self.image_index)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        index = self.image_index[i]
        return (self.images[int(index)], self.ids[i], self.mask[i]), index

    def distinct_images(self) -> DistinctImages:
        """Every image that has a caption, once, in index order."""
        return DistinctImages(self.images, torch.unique(self.image_index))


class DistinctImages(Dataset):
    """(image, image index) for each of ``indices``: one read of each image."""

    def __init__(self, images, indices: torch.Tensor) -> None:
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices[i]
        return self.images[int(index)], index


def caption_pairs(images, captions: Sequence[Sequence[str]], vocab: WordVocab,
                  max_len: int) -> CaptionPairs:
    """Pairs for every caption of every image (``captions[i]``: image i's captions)."""
    index = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    encoded = [vocab.encode(c, max_len) for caps in captions for c in caps]
    ids, mask = zip(*encoded, strict=True)
    return CaptionPairs(images, index, torch.stack(ids), torch.stack(mask))
