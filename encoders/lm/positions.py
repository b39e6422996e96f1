"""No positional encoding inside the block, for every family.

Learned/absolute positions (OPT, BERT, GPT-2) live in the LM's embedding module, which is
never built. Rotary families (LLaMA, Qwen2, Mistral, Pythia) apply RoPE inside attention,
from ``position_embeddings=(cos, sin)`` that the model normally computes once per forward;
the block passes cos = 1 and sin = 0, so ``q * cos + rotate_half(q) * sin == q``: rotary
embedding removed exactly, as the paper removes it, without patching transformers' code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PretrainedConfig

LayerKwargs = Callable[[torch.Tensor], dict[str, object]]


def no_extra_kwargs(hidden: torch.Tensor) -> dict[str, object]:
    return {}


def head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def identity_rotary(config: PretrainedConfig) -> LayerKwargs:
    dim = head_dim(config)

    def kwargs(hidden: torch.Tensor) -> dict[str, object]:
        b, t = hidden.shape[:2]
        cos = torch.ones(b, t, dim, dtype=hidden.dtype, device=hidden.device)
        sin = torch.zeros(b, t, dim, dtype=hidden.dtype, device=hidden.device)
        return {"position_embeddings": (cos, sin)}

    return kwargs
