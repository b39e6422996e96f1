"""The inserted block: adapter in, frozen LM layer(s), adapter out.

Semantics the paper relies on, each enforced here and tested:
- bidirectional: an explicit additive 4-D mask (zeros, ``-inf``-like only on padded keys) is
  always passed, and every attention module's ``is_causal`` is cleared, because transformers'
  SDPA path applies a causal mask whenever it is given no mask;
- no positional encoding: learned position embeddings live in the LM's embedding module,
  which is never built; rotary families get identity cos/sin (``encoders/lm/positions.py``);
- frozen: ``requires_grad=False`` and excluded from ``trainable_parameters`` (so no optimizer
  state), and kept in eval mode (no dropout) whatever ``train()`` is called with;
- gradients still flow through the block to the visual layers below it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from encoders.lm.positions import LayerKwargs, no_extra_kwargs


def bidirectional_mask(
    padding_mask: torch.Tensor | None, batch: int, length: int, dtype: torch.dtype, device
) -> torch.Tensor:
    """Additive attention mask (B, 1, T, T): 0 for every real key, dtype-min for padded keys.

    ``padding_mask`` is (B, T), True/1 where the token is real.
    """
    if padding_mask is None:
        return torch.zeros(batch, 1, length, length, dtype=dtype, device=device)
    blocked = ~padding_mask.bool()  # (B, T)
    mask = torch.zeros(batch, 1, 1, length, dtype=dtype, device=device)
    mask = mask.masked_fill(blocked[:, None, None, :], torch.finfo(dtype).min)
    return mask.expand(batch, 1, length, length)


ADAPTER_INITS = ("default", "xavier", "orthogonal")


class FrozenLMBlock(nn.Module):
    """Visual tokens (B, T, visual_dim) -> same shape, through frozen LM layers.

    ``layers`` empty means the ``adapters`` control: the two linear maps alone.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        visual_dim: int,
        lm_dim: int,
        layer_kwargs: LayerKwargs = no_extra_kwargs,
        final_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.layer_kwargs = layer_kwargs
        self.proj_in = nn.Linear(visual_dim, lm_dim, bias=False)
        # The LM's final norm after the layers, when asked for: frozen like them.
        self.layers = nn.ModuleList([*layers, *([final_norm] if final_norm is not None else [])])
        self.has_final_norm = final_norm is not None
        self.proj_out = nn.Linear(lm_dim, visual_dim, bias=False)
        for p in self.layers.parameters():
            p.requires_grad_(False)
        for module in self.layers.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False
        self.layers.eval()

    def train(self, mode: bool = True) -> FrozenLMBlock:
        super().train(mode)
        self.layers.eval()  # frozen means frozen statistics and no dropout, too
        return self

    def init_adapters(self, scheme: str) -> None:
        """Re-initialise the two trainable linear maps; ``default`` keeps PyTorch's
        Kaiming-uniform. A searchable hyperparameter (the paper leaves it open)."""
        if scheme not in ADAPTER_INITS:
            raise ValueError(f"unknown adapter init {scheme!r}; valid: {', '.join(ADAPTER_INITS)}")
        for proj in (self.proj_in, self.proj_out):
            if scheme == "xavier":
                nn.init.xavier_uniform_(proj.weight)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(proj.weight)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.proj_in.parameters()
        yield from self.proj_out.parameters()

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, **_: object
    ) -> torch.Tensor:
        h = self.proj_in(x)  # (B, T, lm_dim)
        if len(self.layers):
            dtype = next(self.layers.parameters()).dtype
            h = h.to(dtype)
            mask = bidirectional_mask(padding_mask, h.shape[0], h.shape[1], dtype, h.device)
            extra = self.layer_kwargs(h)
            body = self.layers[:-1] if self.has_final_norm else self.layers
            for layer in body:
                h = layer(h, attention_mask=mask, **extra)
            if self.has_final_norm:
                h = self.layers[-1](h)
            h = h.to(x.dtype)
        return self.proj_out(h)


def frozen_parameter_count(block: nn.Module | None) -> int:
    if not isinstance(block, FrozenLMBlock):
        return 0
    return sum(p.numel() for p in block.layers.parameters())
