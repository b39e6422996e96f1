"""Seconds per training epoch of one trial, per device and compute dtype, side by side.

Uses the ``random`` control (same compute as ``pretrained``, no weights needed) so it runs
anywhere, including a GPU machine without the MiniLM package.

    python bench/epoch_time.py [--family minilm --size l6 --epochs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.training import run_trial
from experiments.trial import Hyperparameters, TrialSpec


def seconds_per_epoch(family, size, layer, device, dtype, epochs) -> tuple[float, float]:
    stamps, accs = [], []
    hp = Hyperparameters(epochs=epochs, compute_dtype=dtype)

    def report(metrics, state):
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        accs.append(metrics["val_acc"])

    t0 = time.perf_counter()
    run_trial(TrialSpec(family, size, (layer,), "digits", "random", 0, hp), report, device=device)
    # the first epoch includes warm-up (block build, CUDA context): report the rest
    per_epoch = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return per_epoch, stamps[0] - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="minilm")
    p.add_argument("--size", default="l6")
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--no-cpu", action="store_true", help="GPU only (for blocks too big for CPU)")
    args = p.parse_args()
    from encoders.lm.registry import get_family

    n = get_family(args.family).size(args.size).num_layers
    layer = args.layer % n
    combos = [] if args.no_cpu else [("cpu", "float32")]
    if torch.cuda.is_available():
        combos += [("cuda", "float32"), ("cuda", "bfloat16")]
    rows = []
    for device, dtype in combos:
        per, first = seconds_per_epoch(args.family, args.size, layer, device, dtype, args.epochs)
        rows.append((device, dtype, per, first))
        print(f"{args.family}-{args.size} L{layer} {device:5} {dtype:9} "
              f"{per:7.3f} s/epoch (first epoch incl. setup {first:.2f} s)", flush=True)
    base = rows[0][2]
    for device, dtype, per, _ in rows[1:]:
        print(f"speed-up {device}/{dtype} vs {rows[0][0]}/{rows[0][1]}: {base / per:.1f}x")


if __name__ == "__main__":
    main()
