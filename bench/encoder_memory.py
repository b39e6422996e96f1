"""Peak memory of a training step, the encoder's own weights trained (``--encoder-train
full``) against frozen (``frozen``: no gradient kept for them, none in the optimizer, and no
activation saved for a backward pass that stops at the block), measured side by side.

    python bench/encoder_memory.py [--encoder vit_small_patch16_224] [--batch 32]
                                   [--image-size 224] [--device cpu|cuda]

Each mode runs in a fresh process: a timm encoder with an LM-block-sized frozen block
appended (MiniLM's layer shape, random: no weights needed), AdamW over what trains, three
steps. On CPU the peak is the process's peak RSS above its RSS once the model is built; on
CUDA, ``torch.cuda.max_memory_allocated`` above the model's own bytes. Printed: each mode's
peak, gradient bytes, trainable parameters, and the ratio frozen / full.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_mode(encoder: str, train: str, batch: int, image_size: int, device: str) -> dict:
    import torch

    from encoders.lm.controls import build_block
    from encoders.visual.timm_encoder import create_encoder
    from encoders.visual.timm_weights import freeze_encoder
    from encoders.visual.vit import insert_after_last_block
    from experiments.param_groups import param_groups
    from experiments.trial import Hyperparameters

    torch.manual_seed(0)
    model = create_encoder(encoder, 1000, image_size)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="random", seed=0,
                           visual_dim=model.embed_dim)
    model = insert_after_last_block(model, block)
    if train == "frozen":
        freeze_encoder(model, block)
    model = model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, Hyperparameters()))
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "train": train,
        "peak_bytes": peak,
        "grad_bytes": sum(p.grad.numel() * p.grad.element_size()
                          for p in model.parameters() if p.grad is not None),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_s": (time.perf_counter() - start) / 3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="vit_small_patch16_224")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", help=argparse.SUPPRESS)  # one mode, in its own process
    args = p.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args.encoder, args.mode, args.batch, args.image_size,
                                  args.device)))
        return
    rows = []
    for mode in ("full", "frozen"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--encoder",
                              args.encoder, "--batch", str(args.batch), "--image-size",
                              str(args.image_size), "--device", args.device], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.encoder} at {args.image_size}px, batch {args.batch}, {args.device}, "
          "a MiniLM-layer-shaped frozen block appended; 3 AdamW steps:")
    for r in rows:
        print(f"  {r['train']:>6}: peak {r['peak_bytes'] / 1e6:8.1f} MB above the built model, "
              f"gradients {r['grad_bytes'] / 1e6:7.1f} MB, trainable {r['trainable_params']:,}"
              f", {r['step_s']:.2f} s/step")
    full, frozen = rows
    print(f"frozen / full: peak {frozen['peak_bytes'] / full['peak_bytes']:.2f}, step time "
          f"{frozen['step_s'] / full['step_s']:.2f}")


if __name__ == "__main__":
    main()
