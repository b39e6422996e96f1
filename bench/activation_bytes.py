"""Where ``experiments/memory_model.py``'s bytes per token come from, measured again.

    python bench/activation_bytes.py [--dtype bf16|fp32]

Autograd's saved tensors (``experiments.cost.saved_activation_bytes``) during one forward
of a timm ViT-S/16 at 224 and of LLaMA-shaped decoder layers (transformers' own class, SDPA,
no positions: as lmblocks runs them), frozen and trained. Each figure is the slope between
batches 2 and 4, so the weights (and autocast's copies of them) drop out. Printed: bytes per
token, per layer and per unit of width, beside the constants the memory model uses; then a
ViT-S + LLaMA-7B-layer step at DeiT's batch of 1024 as the model sizes it. On CPU (its
autocast keeps what CUDA's does, up to kernel choice); run it on a GPU machine to compare.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

import orchestrator.plan  # noqa: F401  (registers the families)
from experiments.cost import saved_activation_bytes
from experiments.memory_model import (
    FROZEN_LM_BYTES,
    TRAINED_LM_BYTES,
    TRAINED_VIT_BYTES,
    planned_micro_batch,
    step_memory,
)
from experiments.trial import Hyperparameters, TrialSpec

TOKENS = 197


def slope(build, autocast) -> float:
    """Saved bytes per sample: (at 4 - at 2) / 2."""
    sizes = []
    for n in (2, 4):
        run = build(n)
        with autocast():
            sizes.append(saved_activation_bytes(run))
    return (sizes[1] - sizes[0]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def autocast():
        if args.dtype == "fp32":
            return nullcontext()
        return torch.autocast(device, torch.bfloat16)

    vit = timm.create_model("vit_small_patch16_224", num_classes=10).to(device)
    def images(n):
        x = torch.randn(n, 3, 224, 224, device=device)
        return lambda: vit(x)

    per = slope(images, autocast)
    print(f"device {device}, {args.dtype}; bytes per token, layer and unit of width")
    print(f"  timm ViT-S/16 (trains): {per / (TOKENS * 12 * 384):.1f} "
          f"(model: {TRAINED_VIT_BYTES}); {per / 1e6:.1f} MB a sample")
    for hidden, heads, inter in ((512, 8, 1376), (1024, 16, 2752)):
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter,
                          num_attention_heads=heads, num_key_value_heads=heads)
        cfg._attn_implementation = "sdpa"
        layer = LlamaDecoderLayer(cfg, 0).to(device)
        for frozen in (True, False):
            layer.requires_grad_(not frozen)

            def build(n, hidden=hidden, heads=heads, layer=layer):
                h = torch.randn(n, TOKENS, hidden, device=device, requires_grad=True)
                rope = (torch.ones(n, TOKENS, hidden // heads, device=device),
                        torch.zeros(n, TOKENS, hidden // heads, device=device))  # no positions
                return lambda: layer(h, attention_mask=None, position_embeddings=rope)

            per = slope(build, autocast)
            model = FROZEN_LM_BYTES if frozen else TRAINED_LM_BYTES
            print(f"  LLaMA-shaped layer, hidden {hidden} ({'frozen' if frozen else 'trains'}): "
                  f"{per / (TOKENS * hidden):.1f} (model: {model})")
    trial = TrialSpec("llama", "1-7b", (31,), "imagenet-vit-small", "pretrained", 0,
                      Hyperparameters(batch_size=1024, mixup=0.8, cutmix=1.0))
    memory = step_memory(trial)
    print(f"ViT-S + LLaMA-7B layer at batch 1024, as the model sizes it: "
          f"{memory.at(1024) / 1e9:.1f} GB ({memory.fixed / 1e9:.1f} fixed + "
          f"{memory.per_sample / 1e6:.1f} MB a sample); micro-batch on 80 GB: "
          f"{planned_micro_batch(trial, 80e9)}, on 40 GB: {planned_micro_batch(trial, 40e9)}")


if __name__ == "__main__":
    main()
