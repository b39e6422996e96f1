"""Orchestration overhead: the same small sweep through sweep.py (Ray Tune + Optuna + MLflow)
and as a bare loop of the same trainings, side by side in one run.

The bare loop runs the plan's trials one after another with one torch thread each; the
orchestrated sweep runs them on Ray workers of one CPU each, ``workers`` at a time. The ideal
orchestrated wall time is bare / workers; what is above it, per trial, is the overhead
(Ray start, actor start, Optuna asks, per-epoch checkpoints, MLflow logging, the report).

    python bench/overhead.py [--preset smoke] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()

    import torch

    from experiments.training import run_trial
    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec

    plan = build_plan(load_spec(args.preset).replace(epochs=args.epochs))
    workers = min(len(plan), os.cpu_count() or 1)

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for trial in plan:
        run_trial(trial, lambda metrics, state: None)
    bare = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, str(ROOT / "sweep.py"), "--preset", args.preset, "--epochs",
             str(args.epochs), "--quiet", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
             "--storage", f"{tmp}/ray", "--experiment", "overhead"],
            cwd=tmp, check=True, capture_output=True,
        )
        orchestrated = time.perf_counter() - t0

    ideal = bare / workers
    per_trial = (orchestrated - ideal) * workers / len(plan)
    print(f"{len(plan)} trials x {args.epochs} epochs ({args.preset}), {workers} workers")
    print(f"bare loop, sequential:        {bare:7.1f} s  ({bare / len(plan):.1f} s a trial)")
    print(f"orchestrated (Ray+Optuna+MLflow+report): {orchestrated:7.1f} s  (ideal {ideal:.1f} s)")
    print(f"overhead per trial: {per_trial:.1f} s; orchestrated / ideal: {orchestrated / ideal:.2f}x")


if __name__ == "__main__":
    main()
