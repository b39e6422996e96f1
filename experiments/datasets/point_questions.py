"""Questions about point clouds: many questions share one scene's cloud (stored once), the
question as word ids and mask, the accepted answers as one-hot (multi-hot) score rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.utils.data import Dataset

from encoders.visual.text import WordVocab


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


def encode_questions(vocab: WordVocab, questions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
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
