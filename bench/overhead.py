"""Orchestration overhead: the same sweep through sweep.py (Ray Tune + Optuna + MLflow) and as
a bare loop of the same trainings, side by side in one run, with where the difference went.

The bare loop runs the plan's trials one after another with one torch thread each; the
orchestrated sweep runs them on Ray workers of one CPU each, ``workers`` at a time. The ideal
orchestrated wall time is bare / workers; what is above it, per trial, is the fixed cost
(Ray start, worker start-up, per-epoch checkpoints, MLflow logging, the report). The
orchestrated run times its own phases (its driver wraps them: one process, one run) and the
bench prints each phase's share of the overhead per trial, so the shares add up to it.

    python bench/overhead.py [--preset default] [--epochs 2]     # about 2 minutes on 2 cores

The machine's load average is printed: the figures are wall times on the cores Ray is given,
so anything else running on them shows up as overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPAWNED = "LMBLOCKS_BENCH_SPAWNED"  # wall time at which the bench started the sweep process


class _Timed:
    """Wall seconds and calls of wrapped functions (the sweep driver's phases)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.first: dict[str, float] = {}  # perf_counter at the first call's start

    def wrap(self, owner: object, name: str, label: str) -> None:
        fn = getattr(owner, name, None)
        if fn is None:  # renamed since: that phase is counted in "other"
            return

        def timed(*args, **kwargs):
            t = time.perf_counter()
            self.first.setdefault(label, t)
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t
                self.calls[label] += 1

        setattr(owner, name, timed)


def sweep_child(out: str, argv: list[str]) -> None:
    """Runs sweep.py (as ``python sweep.py`` would, exit included) with its phases timed;
    writes them to ``out``."""
    start = time.perf_counter()
    phases = {"python_start": time.time() - float(os.environ[SPAWNED])}
    import orchestrator.cli  # noqa: F401  (what sweep.py imports first)

    phases["cli_import"] = time.perf_counter() - start
    t = time.perf_counter()
    import ray
    from ray import tune

    from orchestrator import store, tracking, tuner
    from results import build

    phases["driver_imports"] = time.perf_counter() - t
    timed = _Timed()
    timed.wrap(store, "finished_cells", "mlflow_open")
    timed.wrap(ray, "init", "ray_start")
    timed.wrap(tuner, "run_sweep", "run_sweep")
    timed.wrap(tuner, "start_parent_run", "parent_run")
    timed.wrap(tune.Tuner, "fit", "fit")
    timed.wrap(ray, "shutdown", "ray_shutdown")
    timed.wrap(build, "build_report", "report")
    trial_start: dict[str, float] = {}
    trial_end: dict[str, float] = {}
    logger = tracking.MlflowTrialLogger
    for name in ("log_trial_start", "log_trial_result", "log_trial_end"):
        timed.wrap(logger, name, f"mlflow.{name}")
    started, ended = logger.log_trial_start, logger.log_trial_end
    logger.log_trial_start = lambda self, trial: (
        trial_start.setdefault(trial.trial_id, time.perf_counter()), started(self, trial))[1]
    logger.log_trial_end = lambda self, trial, failed=False: (
        trial_end.__setitem__(trial.trial_id, time.perf_counter()), ended(self, trial, failed))[1]
    sys.argv = [str(ROOT / "sweep.py"), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    phases.update(timed.seconds)
    fit_start = timed.first.get("fit", start)
    Path(out).write_text(json.dumps({
        "code": code, "driver": time.perf_counter() - start, "phases": phases,
        "calls": timed.calls,
        "first_trial_after": min(trial_start.values(), default=fit_start) - fit_start,
        "trial_seconds": sum(trial_end[k] - trial_start[k] for k in trial_end if k in trial_start),
    }))
    sys.exit(code)


def bare_loop(plan) -> tuple[float, float, int]:
    """Seconds of the plan's trials run one after another, plus the per-epoch checkpoint
    (``save_state``) the orchestrated trials write, timed apart from the training."""
    import torch

    from experiments.checkpointing import save_state
    from experiments.training import run_trial

    torch.set_num_threads(1)
    saving = [0.0, 0]

    def report(metrics, state) -> None:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            save_state(d, state)
        saving[0] += time.perf_counter() - t
        saving[1] += 1

    t0 = time.perf_counter()
    for trial in plan:
        run_trial(trial, report)
    return time.perf_counter() - t0 - saving[0], saving[0], saving[1]


def main() -> None:
    if sys.argv[1:2] == ["--sweep-child"]:  # the orchestrated run: OUT, then sweep.py's args
        return sweep_child(sys.argv[2], sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()

    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec

    plan = build_plan(load_spec(args.preset).replace(epochs=args.epochs))
    workers = min(len(plan), os.cpu_count() or 1)
    load_before = os.getloadavg()[0]
    bare, saving, epochs = bare_loop(plan)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phases.json"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, SPAWNED: repr(time.time()), "PYTHONPATH": path}  # for Ray's workers
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--sweep-child", str(out), "--preset", args.preset,
             "--epochs", str(args.epochs), "--quiet", "--tracking-uri",
             f"sqlite:///{tmp}/mlflow.db", "--storage", f"{tmp}/ray", "--experiment", "overhead"],
            check=False, cwd=tmp, capture_output=True, text=True, env=env,
        )
        orchestrated = time.perf_counter() - t0
        if done.returncode != 0 or not out.exists():
            sys.exit(f"the orchestrated sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
        run = json.loads(out.read_text())
    load_after = os.getloadavg()[0]

    n, ideal = len(plan), bare / workers
    per_trial = (orchestrated - ideal) * workers / n
    print(f"{n} trials x {args.epochs} epochs ({args.preset}), {workers} workers; "
          f"load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"bare loop, sequential:        {bare:7.1f} s  ({bare / n:.1f} s a trial)")
    print(f"orchestrated (Ray+Optuna+MLflow+report): {orchestrated:7.1f} s  "
          f"(ideal {ideal:.1f} s)")
    print(f"overhead per trial: {per_trial:.1f} s; "
          f"orchestrated / ideal: {orchestrated / ideal:.2f}x")
    print(_breakdown(run, orchestrated, bare, workers, n))
    logged = [f"mlflow.log_trial_{k}" for k in ("start", "result", "end")]
    calls = sum(run["calls"].get(k, 0) for k in logged)
    mlflow_s = sum(run["phases"].get(k, 0.0) for k in logged)
    print(f"\nMLflow from the driver (inside fit, while trials run): {calls} callbacks, "
          f"{mlflow_s:.2f} s, {1000 * mlflow_s / max(1, calls):.0f} ms a call")
    print(f"per-epoch checkpoint (save_state, timed in the bare loop, not in its time): "
          f"{1000 * saving / max(1, epochs):.0f} ms an epoch")


def _breakdown(run: dict, orchestrated: float, bare: float, workers: int, n: int) -> str:
    """Each phase's seconds and its share of the overhead per trial (s x workers / trials)."""
    ph = run["phases"]
    fit = ph.get("fit", 0.0)
    trials = run["trial_seconds"] / workers
    rows = [
        ("python start", ph["python_start"]),
        ("CLI import", ph["cli_import"]),
        ("driver imports (Ray, MLflow, tasks, tuner, report)", ph["driver_imports"]),
        ("MLflow: finished cells (opens the store if it exists)", ph.get("mlflow_open", 0.0)),
        ("Ray start", ph.get("ray_start", 0.0)),
        ("fit: until the first trial starts (workers start, import)", run["first_trial_after"]),
        ("fit: trials' own time above the bare loop's (/ workers)", trials - bare / workers),
        ("fit: the rest (between trials, the last one's tail)",
         fit - run["first_trial_after"] - trials),
        ("Ray shutdown", ph.get("ray_shutdown", 0.0)),
        ("report", ph.get("report", 0.0)),
    ]
    accounted = sum(s for _, s in rows)
    parent = ph.get("parent_run", 0.0)
    setup = ph.get("run_sweep", 0.0) - parent - sum(
        ph.get(k, 0.0) for k in ("ray_start", "fit", "ray_shutdown"))
    exit_ = orchestrated - ph["python_start"] - run["driver"]
    rows += [("MLflow: parent run", parent),
             ("sweep setup and close (MLflow store: new schema; searcher)", setup),
             ("python exit", exit_)]
    accounted += parent + setup + exit_
    rows.append(("other (plan, checks, printing)", orchestrated - bare / workers - accounted))
    lines = ["\nwhere the overhead went (seconds in the orchestrated run; share per trial):"]
    lines += [f"  {name:58s} {s:6.1f} s  {s * workers / n:5.2f} s/trial" for name, s in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
