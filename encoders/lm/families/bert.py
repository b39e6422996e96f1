"""BERT (Devlin et al., 2019) encoder layers: base and large, from google-bert/*.

Shares its config builder with ``minilm`` (all-MiniLM-L6-v2 is a BERT-architecture model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from encoders.lm.registry import HF_FORMAT, LMFamily, LMSize, register_family, with_counts

if TYPE_CHECKING:
    from transformers import BertConfig

LAYER_KEY = r"^(?:.*\.)?encoder\.layer\.{index}\.(.+)$"
MODELING = "transformers.models.bert.modeling_bert"
CONFIG = "transformers.models.bert.configuration_bert:BertConfig"


def make_config(size: LMSize) -> BertConfig:
    from transformers import BertConfig

    return BertConfig(
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        intermediate_size=size.ffn_dim,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )


# name: (one layer's parameters, the whole checkpoint's), as transformers counts them
PARAMS = {
    "base": (7_087_872, 109_482_240),
    "large": (12_596_224, 335_141_888),
}


BERT = register_family(
    LMFamily(
        name="bert",
        sizes=with_counts({
            "base": LMSize("base", "google-bert/bert-base-uncased", 768, 12, 12, 3072, "float32"),
            "large": LMSize(
                "large", "google-bert/bert-large-uncased", 1024, 24, 16, 4096, "float32"
            ),
        }, PARAMS),
        default_size="base",
        layer=f"{MODELING}:BertLayer",
        model=f"{MODELING}:BertModel",
        config=CONFIG,
        layer_key=LAYER_KEY,
        make_config=make_config,
        formats=(HF_FORMAT,),
        description="BERT encoder layers (google-bert/bert-*-uncased)",
    )
)
