"""Mistral 7B (mistralai/Mistral-7B-v0.1): grouped-query attention, rotary removed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from encoders.lm.registry import (
    GGUF_MISTRAL_FORMAT,
    HF_FORMAT,
    LMFamily,
    LMSize,
    register_family,
    with_counts,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import MistralConfig

MODELING = "transformers.models.mistral.modeling_mistral"


def make_config(size: LMSize) -> MistralConfig:
    from transformers import MistralConfig

    return MistralConfig(
        hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads, intermediate_size=size.ffn_dim,
        num_key_value_heads=size.extra["num_key_value_heads"],
        vocab_size=32000,
        tie_word_embeddings=False,
    )


def final_norm(config: MistralConfig) -> nn.Module:
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm

    return MistralRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


# name: (one layer's parameters, the whole checkpoint's), as transformers counts them
PARAMS = {
    "7b": (218_112_000, 7_241_732_096),
}


MISTRAL = register_family(
    LMFamily(
        name="mistral",
        sizes=with_counts({
            "7b": LMSize("7b", "mistralai/Mistral-7B-v0.1", 4096, 32, 32, 14336, "bfloat16",
                         {"num_key_value_heads": 8}),
        }, PARAMS),
        default_size="7b",
        layer=f"{MODELING}:MistralDecoderLayer",
        model=f"{MODELING}:MistralModel",
        config="transformers.models.mistral.configuration_mistral:MistralConfig",
        layer_key=r"^(?:.*\.)?layers\.{index}\.(.+)$",
        make_config=make_config,
        formats=(HF_FORMAT, GGUF_MISTRAL_FORMAT),
        description="Mistral 7B decoder layers",
        rotary=True,
        final_norm_key=r"^(?:model\.)?norm\.(.+)$",
        build_final_norm=final_norm,
    )
)
