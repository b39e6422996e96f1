"""GPT-2 (Radford et al., 2019): every public size, from openai-community/gpt2*.

Old GPT-2 checkpoints store each layer's causal-mask buffer (``attn.bias``,
``attn.masked_bias``) next to its weights; they are not parameters of today's ``GPT2Block``
and are skipped, never read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from encoders.lm.registry import HF_FORMAT, LMFamily, LMSize, register_family, with_counts

if TYPE_CHECKING:
    from torch import nn
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


def final_norm(c: GPT2Config) -> nn.Module:
    from torch import nn

    return nn.LayerNorm(c.hidden_size, eps=c.layer_norm_epsilon)


# name: (one layer's parameters, the whole checkpoint's), as transformers counts them
PARAMS = {
    "124m": (7_087_872, 124_439_808),
    "355m": (12_596_224, 354_823_168),
    "774m": (19_677_440, 774_030_080),
    "1.5b": (30_740_800, 1_557_611_200),
}


GPT2 = register_family(
    LMFamily(
        name="gpt2",
        sizes=with_counts({
            n: LMSize(n, repo, h, layers, heads, 4 * h, "float32")
            for n, (repo, h, layers, heads) in _SIZES.items()
        }, PARAMS),
        default_size="124m",
        layer=f"{MODELING}:GPT2Block",
        model=f"{MODELING}:GPT2Model",
        config="transformers.models.gpt2.configuration_gpt2:GPT2Config",
        layer_key=r"^(?:.*\.)?h\.{index}\.(.+)$",
        make_config=make_config,
        formats=(HF_FORMAT,),
        description="OpenAI GPT-2 blocks (openai-community/gpt2*)",
        ignore=r"^attn\.(bias|masked_bias)$",
        final_norm_key=r"^(?:transformer\.)?ln_f\.(.+)$",
        build_final_norm=final_norm,
    )
)
