"""Running an encoder's blocks over a padded token sequence.

A joint sequence of visual tokens and question tokens (or a variable number of map
polylines) is padded to the longest in the batch; every block must ignore the padded keys.
timm's ``Block`` takes an additive ``attn_mask``; the frozen LM block takes the boolean
``padding_mask`` and builds its own bidirectional mask. Encoders keep their blocks in an
``nn.ModuleList`` named ``blocks``, so the frozen block is appended after the last one
exactly as in the ViT (``encoders.visual.vit.insert_after_last_block``).
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.lm.frozen_block import FrozenLMBlock, bidirectional_mask


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor,
               padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) tokens through every block; ``padding_mask`` (B, T) is True on real tokens."""
    bias = None
    if padding_mask is not None:
        bias = bidirectional_mask(padding_mask, x.shape[0], x.shape[1], x.dtype, x.device)
    for block in blocks:
        if isinstance(block, FrozenLMBlock):
            x = block(x, padding_mask=padding_mask)
        else:
            x = block(x, attn_mask=bias)
    return x
