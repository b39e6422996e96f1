"""GPT-2 (Radford et al., 2019): every public size, from openai-community/gpt2*.

Old GPT-2 checkpoints store each layer's causal-mask buffer (``attn.bias``,
``attn.masked_bias``) next to its weights; they are not parameters of today's ``GPT2Block``
and are skipped, never read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from encoders.lm.hf_format import HF_CHECKPOINT
from encoders.lm.registry import LMFamily, LMSize, register_family

if TYPE_CHECKING:
    from transformers import GPT2Config

MODELING = "transformers.models.gpt2.modeling_gpt2"
# name: (repo, hidden, layers, heads); FFN is 4 x hidden
_SIZES = {
    "124m": ("openai-community/gpt2", 768, 12, 12),
    "355m": ("openai-community/gpt2-medium", 1024, 24, 16),
    "774m": ("openai-community/gpt2-large", 1280, 36, 20),
    "1.5b": ("openai-community/gpt2-xl", 1600, 48, 25),
}


def make_config(size: LMSize) -> GPT2Config:
    from transformers import GPT2Config

    return GPT2Config(
        n_embd=size.hidden_size, n_layer=size.num_layers, n_head=size.num_heads,
        n_inner=size.ffn_dim,
    )


GPT2 = register_family(
    LMFamily(
        name="gpt2",
        sizes={
            n: LMSize(n, repo, h, layers, heads, 4 * h, torch.float32)
            for n, (repo, h, layers, heads) in _SIZES.items()
        },
        default_size="124m",
        layer=f"{MODELING}:GPT2Block",
        model=f"{MODELING}:GPT2Model",
        config="transformers.models.gpt2.configuration_gpt2:GPT2Config",
        layer_key=r"^(?:.*\.)?h\.{index}\.(.+)$",
        make_config=make_config,
        formats=(HF_CHECKPOINT,),
        description="OpenAI GPT-2 blocks (openai-community/gpt2*)",
        ignore=r"^attn\.(bias|masked_bias)$",
        final_norm_key=r"^(?:transformer\.)?ln_f\.(.+)$",
        build_final_norm=lambda c: nn.LayerNorm(c.hidden_size, eps=c.layer_norm_epsilon),
    )
)
