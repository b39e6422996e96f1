"""Pythia (Biderman et al., 2023; GPT-NeoX architecture): every size, EleutherAI/pythia-*.

Rotary on 25% of each head (``rotary_pct``) and parallel attention/MLP residuals; the block
runs with identity rotary embeddings (no positions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from encoders.lm.registry import HF_FORMAT, LMFamily, LMSize, register_family, with_counts

if TYPE_CHECKING:
    from torch import nn
    from transformers import GPTNeoXConfig

MODELING = "transformers.models.gpt_neox.modeling_gpt_neox"
# name: (hidden, layers, heads); FFN is 4 x hidden
_SIZES = {
    "70m": (512, 6, 8),
    "160m": (768, 12, 12),
    "410m": (1024, 24, 16),
    "1b": (2048, 16, 8),
    "1.4b": (2048, 24, 16),
    "2.8b": (2560, 32, 32),
    "6.9b": (4096, 32, 32),
    "12b": (5120, 36, 40),
}


def make_config(size: LMSize) -> GPTNeoXConfig:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads, intermediate_size=size.ffn_dim,
        rotary_pct=0.25, use_parallel_residual=True, vocab_size=50304 if size.hidden_size < 5120 else 50688,
        tie_word_embeddings=False,
    )


def final_norm(c: GPTNeoXConfig) -> nn.Module:
    from torch import nn

    return nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


# name: (one layer's parameters, the whole checkpoint's), as transformers counts them
PARAMS = {
    "70m": (3_152_384, 70_426_624),
    "160m": (7_087_872, 162_322_944),
    "410m": (12_596_224, 405_334_016),
    "1b": (50_358_272, 1_011_781_632),
    "1.4b": (50_358_272, 1_414_647_808),
    "2.8b": (78_676_480, 2_775_208_960),
    "6.9b": (201_379_840, 6_856_253_440),
    "12b": (314_639_360, 11_846_072_320),
}


PYTHIA = register_family(
    LMFamily(
        name="pythia",
        sizes=with_counts({
            n: LMSize(n, f"EleutherAI/pythia-{n}", h, layers, heads, 4 * h, "float16")
            for n, (h, layers, heads) in _SIZES.items()
        }, PARAMS),
        default_size="160m",
        layer=f"{MODELING}:GPTNeoXLayer",
        model=f"{MODELING}:GPTNeoXModel",
        config="transformers.models.gpt_neox.configuration_gpt_neox:GPTNeoXConfig",
        layer_key=r"^(?:.*\.)?layers\.{index}\.(.+)$",
        make_config=make_config,
        formats=(HF_FORMAT,),
        description="EleutherAI Pythia (GPT-NeoX) layers",
        rotary=True,
        ignore=r"^attention\.(bias|masked_bias|rotary_emb\.inv_freq)$",
        final_norm_key=r"^(?:gpt_neox\.)?final_layer_norm\.(.+)$",
        build_final_norm=final_norm,
        arch_fields=("use_parallel_residual",),  # where each sublayer's norm reads from
    )
)
