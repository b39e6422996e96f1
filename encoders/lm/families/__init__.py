"""Importing this package registers every shipped LM family (one module each)."""

from encoders.lm.families import (  # noqa: F401
    bert,
    gpt2,
    llama,
    minilm,
    mistral,
    opt,
    pythia,
    qwen2,
    smollm2,
)
