"""Inserted modules of the capacity controls, in place of the LM block.

- ``MLPBlock`` (``mlp``): the paper's ViT-S-MLP / "+MLP" arm, Linear -> GELU -> LayerNorm ->
  Linear, per token, all trainable. Neither the paper nor the official code gives its hidden
  width (the code is not released), so lmblocks uses the LM's hidden size: the two linears are
  exactly the adapters' shapes (bias-free like them), the LayerNorm adds 2 x hidden; the arm
  is "the adapters with a nonlinearity instead of the LM layer".
- ``VisualBlockSlot`` (``visual-block``): one more trainable block of the encoder's own kind,
  sized to the LM block's parameter count. The block factory cannot know the encoder, so it
  returns this slot with the count to match; ``encoders.visual.vit.insert_after_last_block``
  fills it with a block made like the encoder's last one (``fill``), then the slot runs it.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPBlock(nn.Module):
    """(B, T, visual_dim) -> same shape: Linear(visual, hidden) -> GELU -> LayerNorm(hidden)
    -> Linear(hidden, visual), bias-free linears; ``hidden`` is the LM's width."""

    def __init__(self, visual_dim: int, hidden: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(visual_dim, hidden, bias=False)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, visual_dim, bias=False)

    def init_adapters(self, scheme: str) -> None:
        """The ``adapter_init`` hyperparameter, applied to the two linears as to the adapters."""
        from encoders.lm.frozen_block import init_linears

        init_linears(scheme, self.proj_in, self.proj_out)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                **_: object) -> torch.Tensor:  # per token: no mask needed
        return self.proj_out(self.norm(self.act(self.proj_in(x))))


def mlp_params(visual_dim: int, hidden: int) -> int:
    """``MLPBlock``'s parameter count: two bias-free linears and the LayerNorm's affine."""
    return 2 * visual_dim * hidden + 2 * hidden


class VisualBlockSlot(nn.Module):
    """Holds the ``visual-block`` control's block once the encoder has made it.

    ``lm_params``: the LM block's parameter count it is sized to; after ``fill``,
    ``visual_params`` is the made block's count and ``mlp_hidden`` its MLP width."""

    def __init__(self, lm_params: int) -> None:
        super().__init__()
        self.lm_params = lm_params
        self.block: nn.Module | None = None
        self.mlp_hidden = 0

    def fill(self, block: nn.Module, mlp_hidden: int) -> None:
        if self.block is not None:
            raise RuntimeError("visual-block: the slot is filled already (one encoder per slot)")
        self.block = block
        self.mlp_hidden = mlp_hidden

    @property
    def visual_params(self) -> int:
        return sum(p.numel() for p in self.block.parameters()) if self.block is not None else 0

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.block is None:
            raise RuntimeError("visual-block: the slot was never filled; append it with "
                               "encoders.visual.vit.insert_after_last_block")
        kwargs.pop("padding_mask", None)  # the encoder's blocks take its additive attn_mask
        return self.block(x, *args, **kwargs)
