"""The inserted block: adapter in, frozen LM layer(s), adapter out.

Semantics the paper relies on, each enforced here and tested:
- bidirectional: an explicit additive 4-D mask (zeros, ``-inf``-like only on padded keys) is
  always passed, and every attention module's ``is_causal`` is cleared, because transformers'
  SDPA path applies a causal mask whenever it is given no mask;
- no positional encoding: learned position embeddings live in the LM's embedding module,
  which is never built; rotary families get identity cos/sin (``encoders/lm/positions.py``);
- frozen: ``requires_grad=False`` and excluded from ``trainable_parameters`` (so no optimizer
  state), and kept in eval mode (no dropout) whatever ``train()`` is called with; the
  ``finetuned`` and ``random-trained`` controls pass ``trainable=True``: the same layers with
  ``requires_grad=True`` (still in eval mode: trainability is all that differs), found for an
  optimizer's own parameter group under the block's ``layers.`` (``lm_layer_parameters``);
- gradients still flow through the block to the visual layers below it;
- what follows the layers (``final_norm``, ``FINAL_NORMS``): nothing (``none``, lmblocks'
  default), the official code's gain-1 RMSNorm, eps 1e-6, output in float32 (``unit-rms``:
  ``UnitRMSNorm``, never the LM's trained gain), or the LM's own trained final norm (``lm``,
  in ``layers``: frozen or trained with them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from encoders.lm.block_options import ADAPTER_INITS
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


LM_LAYERS_PREFIX = "layers."  # the LM's parameters, relative to the block


class UnitRMSNorm(nn.Module):
    """The official code's ``self.norm`` after the LLaMA layer(s): an RMSNorm whose gain is
    never loaded (so 1), eps 1e-6, computed and returned in float32 (``h.float()``)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)


class FrozenLMBlock(nn.Module):
    """Visual tokens (B, T, visual_dim) -> same shape, through frozen LM layers.

    ``layers`` empty means the ``adapters`` control: the two linear maps alone.
    ``final_norm``: the LM's own norm (loaded with the layers); ``unit_norm``: the official
    code's ``UnitRMSNorm`` instead; ``trainable``: the LM layers (and the LM's norm) train.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        visual_dim: int,
        lm_dim: int,
        layer_kwargs: LayerKwargs = no_extra_kwargs,
        final_norm: nn.Module | None = None,
        *,
        unit_norm: bool = False,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.layer_kwargs = layer_kwargs
        self.proj_in = nn.Linear(visual_dim, lm_dim, bias=False)
        # The LM's final norm after the layers, when asked for: frozen like them.
        self.layers = nn.ModuleList([*layers, *([final_norm] if final_norm is not None else [])])
        self.has_final_norm = final_norm is not None
        if unit_norm and final_norm is not None:
            raise ValueError("final norm: the LM's own norm or the unit RMSNorm, not both")
        self.unit_norm = UnitRMSNorm() if unit_norm and len(layers) else None
        self.proj_out = nn.Linear(lm_dim, visual_dim, bias=False)
        self.lm_trainable = trainable
        for p in self.layers.parameters():
            p.requires_grad_(trainable)
        for module in self.layers.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False
        self.layers.eval()

    def train(self, mode: bool = True) -> FrozenLMBlock:
        super().train(mode)
        self.layers.eval()  # frozen means frozen statistics and no dropout, too (trained
        return self  # layers as well: whether they train is all that differs between arms

    def init_adapters(self, scheme: str) -> None:
        """Re-initialise the two trainable linear maps; ``default`` keeps PyTorch's
        Kaiming-uniform. A searchable hyperparameter (the paper leaves it open)."""
        init_linears(scheme, self.proj_in, self.proj_out)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.proj_in.parameters()
        yield from self.proj_out.parameters()
        if self.lm_trainable:
            yield from self.layers.parameters()

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
            if self.unit_norm is not None:  # float32 out, as the official code's h.float()
                return self.proj_out(self.unit_norm(h))
            h = h.to(x.dtype)
        return self.proj_out(h)


def frozen_parameter_count(block: nn.Module | None) -> int:
    """Parameters of the inserted module that do not train (0: none, or nothing inserted)."""
    if block is None:
        return 0
    return sum(p.numel() for p in block.parameters() if not p.requires_grad)


def trainable_parameter_count(block: nn.Module | None) -> int:
    """Parameters of the inserted module that train (adapters, MLP, trained LM layers)."""
    if block is None:
        return 0
    return sum(p.numel() for p in block.parameters() if p.requires_grad)


def lm_layer_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name in ``model``, parameter) of every LM layer (and the LM's own final norm) of
    every ``FrozenLMBlock`` in ``model``, trained or not: the parameters an optimizer gives
    their own learning rate scale (``lm_lr_scale``). Their names are the block's name plus
    ``LM_LAYERS_PREFIX`` (``blocks.12.layers.0.self_attn.q_proj.weight``)."""
    out = []
    for prefix, module in model.named_modules():
        if isinstance(module, FrozenLMBlock):
            head = f"{prefix}.{LM_LAYERS_PREFIX}" if prefix else LM_LAYERS_PREFIX
            out += [(head + n, p) for n, p in module.layers.named_parameters()]
    return out


def init_linears(scheme: str, *linears: nn.Linear) -> None:
    """The ``adapter_init`` hyperparameter on linear maps (the adapters, the MLP control's)."""
    if scheme not in ADAPTER_INITS:
        raise ValueError(f"unknown adapter init {scheme!r}; valid: {', '.join(ADAPTER_INITS)}")
    for proj in linears:
        if scheme == "xavier":
            nn.init.xavier_uniform_(proj.weight)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(proj.weight)
