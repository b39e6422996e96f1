"""LLaMA-1, Llama-2, Llama-3 and 3.1: every public size (the paper used LLaMA-7B's last layer).

Size names carry the generation: ``1-7b`` (LLaMA-1, Hugging Face conversion at
huggyllama/llama-7b), ``2-70b``, ``3-8b``, ``3.1-70b``. Grouped-query attention where the
model has it (Llama-2-70B, Llama-3): ``num_key_value_heads`` in ``extra``. Rotary embedding
is removed in the block (identity cos/sin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from encoders.lm.registry import (
    GGUF_LLAMA_FORMAT,
    HF_FORMAT,
    META_LLAMA_FORMAT,
    LMFamily,
    LMSize,
    register_family,
    with_counts,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import LlamaConfig

MODELING = "transformers.models.llama.modeling_llama"
F16, BF16 = "float16", "bfloat16"
# name: (repo, hidden, layers, heads, kv heads, ffn, dtype)
_SIZES = {
    "1-7b": ("huggyllama/llama-7b", 4096, 32, 32, 32, 11008, F16),
    "1-13b": ("huggyllama/llama-13b", 5120, 40, 40, 40, 13824, F16),
    "1-30b": ("huggyllama/llama-30b", 6656, 60, 52, 52, 17920, F16),
    "1-65b": ("huggyllama/llama-65b", 8192, 80, 64, 64, 22016, F16),
    "2-7b": ("meta-llama/Llama-2-7b-hf", 4096, 32, 32, 32, 11008, F16),
    "2-13b": ("meta-llama/Llama-2-13b-hf", 5120, 40, 40, 40, 13824, F16),
    "2-70b": ("meta-llama/Llama-2-70b-hf", 8192, 80, 64, 8, 28672, F16),
    "3-8b": ("meta-llama/Meta-Llama-3-8B", 4096, 32, 32, 8, 14336, BF16),
    "3-70b": ("meta-llama/Meta-Llama-3-70B", 8192, 80, 64, 8, 28672, BF16),
    "3.1-8b": ("meta-llama/Llama-3.1-8B", 4096, 32, 32, 8, 14336, BF16),
    "3.1-70b": ("meta-llama/Llama-3.1-70B", 8192, 80, 64, 8, 28672, BF16),
}


def make_config(size: LMSize) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads, intermediate_size=size.ffn_dim,
        num_key_value_heads=size.extra["num_key_value_heads"],
        vocab_size=128256 if size.name.startswith("3") else 32000,
        tie_word_embeddings=False,
    )


def final_norm(config: LlamaConfig) -> nn.Module:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


# name: (one layer's parameters, the whole checkpoint's), as transformers counts them
PARAMS = {
    "1-7b": (202_383_360, 6_738_415_616),
    "1-13b": (317_204_480, 13_015_864_320),
    "1-30b": (535_049_216, 32_528_943_616),
    "1-65b": (809_517_056, 65_285_660_672),
    "2-7b": (202_383_360, 6_738_415_616),
    "2-13b": (317_204_480, 13_015_864_320),
    "2-70b": (855_654_400, 68_976_648_192),
    "3-8b": (218_112_000, 8_030_261_248),
    "3-70b": (855_654_400, 70_553_706_496),
    "3.1-8b": (218_112_000, 8_030_261_248),
    "3.1-70b": (855_654_400, 70_553_706_496),
}


LLAMA = register_family(
    LMFamily(
        name="llama",
        sizes=with_counts({
            n: LMSize(n, repo, h, layers, heads, ffn, dtype, {"num_key_value_heads": kv})
            for n, (repo, h, layers, heads, kv, ffn, dtype) in _SIZES.items()
        }, PARAMS),
        default_size="1-7b",
        layer=f"{MODELING}:LlamaDecoderLayer",
        model=f"{MODELING}:LlamaModel",
        config="transformers.models.llama.configuration_llama:LlamaConfig",
        layer_key=r"^(?:.*\.)?layers\.{index}\.(.+)$",
        make_config=make_config,
        formats=(HF_FORMAT, META_LLAMA_FORMAT, GGUF_LLAMA_FORMAT),
        description="Meta LLaMA 1/2/3/3.1 decoder layers",
        rotary=True,
        final_norm_key=r"^(?:model\.)?norm\.(.+)$",
        build_final_norm=final_norm,
        ignore=r"^self_attn\.rotary_emb\.inv_freq$",
    )
)
