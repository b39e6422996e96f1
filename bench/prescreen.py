"""Does ``--prescreen K`` find the grid's best cell for a fraction of its trial-seconds?

    python bench/prescreen.py [--task digits-convstem] [--k 4] [--epochs 5] [--seeds 0 1 2]
                              [--positions end middle start] [--workers 2] [--out FILE.json]

The full grid: every MiniLM layer x each position x each seed, the pretrained block, plus no
block (the reference every gain is paired against). Each trial trains in a fresh worker
process (one torch thread each, ``--workers`` at a time), through ``run_trial`` as a sweep's
trial does, without Ray or MLflow. The prescreen (``orchestrator.prescreen``) ranks the
cells by their block's initial CKA (timed: its seconds count against it) and keeps the top
K; training is deterministic per trial, so the prescreen's trials are the grid's own runs of
the kept cells, not retrained.

Printed, measured side by side in one run:
- the grid's best cell (highest mean final metric over seeds) and the prescreen's best (the
  best of the kept cells), their paired difference per seed with its bootstrap 95% interval
  (``results.stats.bootstrap_ci``): found when it is the same cell, or the interval includes 0;
- the share of the grid's trial-seconds the prescreen spent: its kept trials + no block + its
  measuring, over every trial of the grid;
- Spearman's rho of the initial CKA against the gain over no block, over the cells.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train(trial_config: dict) -> dict:
    """One trial in this worker: its final metric and its wall seconds."""
    import torch

    torch.set_num_threads(1)
    from experiments.training import run_trial
    from experiments.trial import TrialSpec

    trial = TrialSpec.from_config(trial_config)
    reports: list[dict] = []
    start = time.perf_counter()
    run_trial(trial, lambda metrics, state: reports.append(metrics), cpus=1)
    return {"key": trial.key, "seconds": time.perf_counter() - start,
            "metric": float(reports[-1]["val_acc"]),
            "block_cka_init": reports[-1].get("block_cka_init")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits-convstem")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--positions", nargs="+", default=["end", "middle", "start"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import numpy as np
    import pandas as pd

    from orchestrator.plan import build_plan
    from orchestrator.prescreen import cell_of, prescreen
    from orchestrator.spec import SweepSpec
    from results.rectifier import spearman, spearman_interval
    from results.stats import bootstrap_ci

    spec = SweepSpec(tasks=(args.task,), layers=("all",), positions=tuple(args.positions),
                     controls=("pretrained", "none"), seeds=tuple(args.seeds)).replace(
        epochs=args.epochs, schedule="cosine", warmup_epochs=1.0)
    plan = build_plan(spec)
    kept, ranking = prescreen(plan, args.k)
    screen_seconds = ranking.attrs["seconds"]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        done = {r["key"]: r for r in pool.map(train, [t.to_config() for t in plan])}
    wall = time.perf_counter() - start
    rows = pd.DataFrame([{**done[t.key], "cell": cell_of(t), "control": t.control,
                          "seed": t.seed, "layers": t.layer_label, "position": t.position}
                         for t in plan])
    none = rows[rows["control"] == "none"].set_index("seed")["metric"]
    pre = rows[rows["control"] == "pretrained"].assign(
        gain=lambda d: d["metric"] - d["seed"].map(none))
    means = pre.groupby("cell")["metric"].mean()
    kept_cells = set(ranking.loc[ranking["kept"], "cell"])
    grid_best = means.idxmax()
    screen_best = means[means.index.isin(kept_cells)].idxmax()
    a = pre[pre["cell"] == screen_best].set_index("seed")["metric"]
    b = pre[pre["cell"] == grid_best].set_index("seed")["metric"]
    diffs = (a - b).dropna().to_numpy()
    lo, hi = bootstrap_ci(diffs)
    found = screen_best == grid_best or (lo <= 0 <= hi)
    kept_keys = {t.key for t in kept}
    grid_seconds = float(rows["seconds"].sum())
    spent = float(rows.loc[rows["key"].isin(kept_keys), "seconds"].sum()) + screen_seconds
    cells = pre.groupby("cell").agg(gain=("gain", "mean"), layers=("layers", "first"),
                                    position=("position", "first"))
    cells = cells.join(ranking.set_index("cell")[["block_cka_init", "rank"]])
    rho = spearman(cells["block_cka_init"].to_numpy(float), cells["gain"].to_numpy(float))
    rho_lo, rho_hi = spearman_interval(cells["block_cka_init"].to_numpy(float),
                                       cells["gain"].to_numpy(float))

    def name(cell: str) -> str:
        r = cells.loc[cell]
        return f"L{r['layers']} at {r['position']} (rank {int(r['rank'])})"

    result = {
        "task": args.task, "epochs": args.epochs, "seeds": args.seeds, "k": args.k,
        "cells": len(cells), "trials": len(plan), "workers": args.workers,
        "grid_best": name(grid_best), "grid_best_mean": float(means[grid_best]),
        "prescreen_best": name(screen_best), "prescreen_best_mean": float(means[screen_best]),
        "paired_difference": float(np.mean(diffs)), "ci": [lo, hi], "found": bool(found),
        "grid_trial_seconds": grid_seconds, "prescreen_seconds_measuring": screen_seconds,
        "prescreen_trial_seconds": spent, "share": spent / grid_seconds,
        "spearman_rho": rho, "rho_ci": [rho_lo, rho_hi], "wall_seconds": wall,
    }
    print(cells.sort_values("rank").round(4).to_string())
    print(f"\n{args.task}: {len(cells)} cells x {len(args.seeds)} seeds, {args.epochs} epochs, "
          f"K = {args.k}")
    print(f"grid's best: {result['grid_best']}, mean {result['grid_best_mean']:.4f}")
    print(f"prescreen's best: {result['prescreen_best']}, mean "
          f"{result['prescreen_best_mean']:.4f}; paired difference {np.mean(diffs):+.4f} "
          f"[{lo:+.4f}, {hi:+.4f}] (n={len(diffs)}): {'found' if found else 'NOT found'}")
    print(f"trial-seconds: prescreen {spent:.0f} s (measuring {screen_seconds:.1f} s) of the "
          f"grid's {grid_seconds:.0f} s = {spent / grid_seconds:.1%} (goal <= 35%)")
    print(f"Spearman rho (initial CKA vs gain over no block, {len(cells)} cells): {rho:+.2f} "
          f"[{rho_lo:+.2f}, {rho_hi:+.2f}]")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
