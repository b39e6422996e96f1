"""Question and caption tokens for the multi-modal tasks: a word vocabulary and a small
trainable text embedding.

The paper feeds the frozen LM block visual tokens together with text tokens of the task's
own text encoder; the block itself sees no LM embedding table (its input is the trainable
``proj_in`` of whatever tokens arrive), so a word-level vocabulary built from the task's
training text is enough: templated questions have a few dozen words, VQAv2's training
questions some thousands.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words: 'What is left of the red cube?' -> [what, is, ...]."""
    return _WORD.findall(text.lower())


class WordVocab:
    """Word -> id; 0 is padding, 1 an unknown word. Built from training text only."""

    def __init__(self, vocabulary: Iterable[str]) -> None:
        self.itos = ["<pad>", "<unk>", *vocabulary]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int | None = None,
              min_count: int = 1) -> WordVocab:
        """The most frequent words (ties by first appearance), at most ``max_size``."""
        counts = Counter(w for t in texts for w in words(t))
        common = [w for w, c in counts.most_common(max_size) if c >= min_count]
        return cls(common)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(max_len,) ids, truncated or padded, and (max_len,) bool, True on real words."""
        ids = [self.stoi.get(w, UNK) for w in words(text)][:max_len]
        out = torch.full((max_len,), PAD, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out, out != PAD


class TextEmbedding(nn.Module):
    """(B, L) ids -> (B, L, dim): word embedding plus learned positions (the text's own
    positions, as the visual tokens carry theirs), layer-normed."""

    def __init__(self, vocab_size: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.word(ids) + self.pos[:, : ids.shape[1]])
