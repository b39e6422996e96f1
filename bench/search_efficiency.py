"""Compute spent finding the best layer: ``--search optuna --scheduler asha`` against
``--search grid``, on the same layer sweep, side by side in one run.

Both go through sweep.py (Ray Tune + Optuna + MLflow). From MLflow's per-epoch records
(``epoch_time_s``, logged with a timestamp) the script replays each sweep in time order and
reports the training compute (trial-epochs and trial-seconds) spent until some trial first
reported a validation accuracy within ``--within`` (default 0.5 points) of the grid's best,
and in total. The grid must run every cell to know its best, so its total is its price.

    python bench/search_efficiency.py [--layers all] [--epochs 8] [--num-samples 6]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Replay:
    trials: int
    epochs: int
    seconds: float
    best: float
    epochs_to_reach: int | None
    seconds_to_reach: float | None
    wall: float


def sweep(tmp: str, name: str, common: list[str], extra: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), *common, *extra, "--quiet",
         "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--storage", f"{tmp}/ray",
         "--experiment", name],
        cwd=tmp, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{name} sweep failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def epochs_in_time_order(uri: str, experiment: str) -> tuple[int, list[tuple[int, float, float]]]:
    """(trials, [(timestamp ms, val_acc, epoch seconds)]) over every epoch of every trial."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`lmblocks.kind` = 'trial'")
    events = []
    for run in runs:
        acc = {m.step: m for m in client.get_metric_history(run.info.run_id, "val_acc")}
        secs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")}
        events += [(m.timestamp, m.value, secs.get(step, 0.0)) for step, m in acc.items()]
    return len(runs), sorted(events)


def replay(uri: str, experiment: str, target: float, wall: float) -> Replay:
    trials, events = epochs_in_time_order(uri, experiment)
    epochs, seconds, reached = 0, 0.0, None
    for _, acc, secs in events:
        epochs += 1
        seconds += secs
        if reached is None and acc >= target:
            reached = (epochs, seconds)
    return Replay(trials, epochs, seconds, max(a for _, a, _ in events),
                  reached[0] if reached else None, reached[1] if reached else None, wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--layers", default="all")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", default="0")
    p.add_argument("--num-samples", type=int, default=6, help="optuna trials (default 6)")
    p.add_argument("--sampler", default="tpe")
    p.add_argument("--within", type=float, default=0.005, help="of the grid's best (0.005)")
    args = p.parse_args()

    common = ["--preset", args.preset, "--controls", "pretrained", "--layers", args.layers,
              "--seeds", args.seed, "--epochs", str(args.epochs)]
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        grid_wall = sweep(tmp, "grid", common, ["--search", "grid"])
        asha_wall = sweep(tmp, "asha", common, [
            "--search", "optuna", "--sampler", args.sampler, "--num-samples",
            str(args.num_samples), "--scheduler", "asha"])
        _, grid_events = epochs_in_time_order(uri, "grid")
        grid_best = max(a for _, a, _ in grid_events)
        target = grid_best - args.within
        grid = replay(uri, "grid", target, grid_wall)
        asha = replay(uri, "asha", target, asha_wall)

    print(f"layer sweep: {' '.join(common)}; target: val_acc >= {target:.4f} "
          f"(grid's best {grid_best:.4f} - {args.within})")
    print(f"{'search':<22}{'trials':>7}{'epochs':>8}{'train s':>9}{'wall s':>8}{'best':>8}"
          f"{'epochs to target':>18}{'train s to target':>19}")
    for name, r in (("grid", grid), (f"optuna({args.sampler})+asha", asha)):
        to_e = "not reached" if r.epochs_to_reach is None else str(r.epochs_to_reach)
        to_s = "not reached" if r.seconds_to_reach is None else f"{r.seconds_to_reach:.1f}"
        print(f"{name:<22}{r.trials:>7}{r.epochs:>8}{r.seconds:>9.1f}{r.wall:>8.1f}"
              f"{r.best:>8.4f}{to_e:>18}{to_s:>19}")
    print(f"total training compute, asha / grid: {asha.seconds / grid.seconds:.2f} "
          f"({asha.epochs} vs {grid.epochs} trial-epochs)")
    if asha.seconds_to_reach is not None:
        print(f"compute to reach the target, asha / grid's full sweep (the grid's price of "
              f"knowing its best): {asha.seconds_to_reach / grid.seconds:.2f}")
    else:
        print("optuna+asha did not reach the target within its budget")


if __name__ == "__main__":
    main()
