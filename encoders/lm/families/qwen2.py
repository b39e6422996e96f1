"""Qwen2.5 (Qwen/Qwen2.5-*): every base size; grouped-query attention, rotary removed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from encoders.lm.registry import (
    GGUF_QWEN2_FORMAT,
    HF_FORMAT,
    LMFamily,
    LMSize,
    register_family,
    with_counts,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import Qwen2Config

MODELING = "transformers.models.qwen2.modeling_qwen2"
# name: (hidden, layers, heads, kv heads, ffn)
_SIZES = {
    "0.5b": (896, 24, 14, 2, 4864),
    "1.5b": (1536, 28, 12, 2, 8960),
    "3b": (2048, 36, 16, 2, 11008),
    "7b": (3584, 28, 28, 4, 18944),
    "14b": (5120, 48, 40, 8, 13824),
    "32b": (5120, 64, 40, 8, 27648),
    "72b": (8192, 80, 64, 8, 29568),
}


def make_config(size: LMSize) -> Qwen2Config:
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads, intermediate_size=size.ffn_dim,
        num_key_value_heads=size.extra["num_key_value_heads"],
        vocab_size=151936,
        tie_word_embeddings=size.hidden_size <= 2048,  # 0.5B-3B tie their head
    )


def final_norm(config: Qwen2Config) -> nn.Module:
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    return Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


# name: (one layer's parameters, the whole checkpoint's), as transformers counts them
PARAMS = {
    "0.5b": (14_912_384, 494_032_768),
    "1.5b": (46_797_824, 1_543_714_304),
    "3b": (77_076_992, 3_085_938_688),
    "7b": (233_057_792, 7_614_699_008),
    "14b": (275_268_608, 14_768_722_944),
    "32b": (487_605_248, 32_762_565_632),
    "72b": (877_684_736, 72_704_106_496),
}


QWEN2 = register_family(
    LMFamily(
        name="qwen2",
        sizes=with_counts({
            n: LMSize(n, f"Qwen/Qwen2.5-{n.upper()}", h, layers, heads, ffn, "bfloat16",
                      {"num_key_value_heads": kv})
            for n, (h, layers, heads, kv, ffn) in _SIZES.items()
        }, PARAMS),
        default_size="0.5b",
        layer=f"{MODELING}:Qwen2DecoderLayer",
        model=f"{MODELING}:Qwen2Model",
        config="transformers.models.qwen2.configuration_qwen2:Qwen2Config",
        layer_key=r"^(?:.*\.)?layers\.{index}\.(.+)$",
        make_config=make_config,
        formats=(HF_FORMAT, GGUF_QWEN2_FORMAT),
        description="Alibaba Qwen2.5 decoder layers",
        rotary=True,
        final_norm_key=r"^(?:model\.)?norm\.(.+)$",
        build_final_norm=final_norm,
    )
)
