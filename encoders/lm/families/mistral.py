"""Mistral 7B (mistralai/Mistral-7B-v0.1): grouped-query attention, rotary removed."""

import torch
from transformers import MistralConfig
from transformers.models.mistral.modeling_mistral import (
    MistralDecoderLayer,
    MistralModel,
    MistralRMSNorm,
)

from encoders.lm.hf_format import HF_CHECKPOINT
from encoders.lm.registry import LMFamily, LMSize, register_family


def make_config(size: LMSize) -> MistralConfig:
    return MistralConfig(
        hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads, intermediate_size=size.ffn_dim,
        num_key_value_heads=size.extra["num_key_value_heads"],
        vocab_size=32000,
        tie_word_embeddings=False,
    )


MISTRAL = register_family(
    LMFamily(
        name="mistral",
        sizes={
            "7b": LMSize("7b", "mistralai/Mistral-7B-v0.1", 4096, 32, 32, 14336, torch.bfloat16,
                         {"num_key_value_heads": 8}),
        },
        default_size="7b",
        layer_class=MistralDecoderLayer,
        model_class=MistralModel,
        config_class=MistralConfig,
        layer_key=r"^(?:.*\.)?layers\.{index}\.(.+)$",
        make_config=make_config,
        formats=(HF_CHECKPOINT,),
        description="Mistral 7B decoder layers",
        rotary=True,
        final_norm_key=r"^(?:model\.)?norm\.(.+)$",
        build_final_norm=lambda c: MistralRMSNorm(c.hidden_size, eps=c.rms_norm_eps),
    )
)
