"""Scale by simulation: the real driver over a large study whose trials return at once.

Each study is planned from the CLI (the issue's kind of study: several families, every size
and layer, several tasks, four controls, seeds) and driven by ``sweep.py``'s own code path
(``orchestrator.cli.main``: the finished-cell lookup, Ray Tune with Optuna's grid sampler and
its journal, the MLflow logger into a SQLite store, the report, the sweep run's summary).
Only the trial is replaced: it reports one epoch's metrics and a checkpoint and returns, so
what is measured is the driver's cost per trial. Pre-flight of the weights is skipped (no
weights are read; the Hub is unreachable here).

Per study, each in its own process (peak memory is per process):
- plan: ``build_plan`` seconds;
- dry run: ``sweep.py --dry-run`` wall seconds (a fresh process) against no store, and
  against the store once it holds the study's runs (every cell's status is read);
- driver: seconds per trial of the whole sweep (wall; and the driver's CPU seconds), and of
  its phases (finished-cell lookup, Ray Tune's fit, report, summary), peak RSS of the driver;
- report: ``lmblocks-report`` over the study's runs (a fresh process);
- Ray Tune alone (``tune_floor``): the same instant trial and Tune settings (its scheduler
  too) with no Optuna, no MLflow and nothing else of lmblocks, over the study's first 2,000
  trials at most: the floor under the driver's cost a trial on this machine, and the
  driver's cost as a multiple of it.

    python bench/scale.py                 # 1k, 5k, 20k cells: ~1 h on 2 cores (0.06-0.2 s a trial)
    python bench/scale.py --studies 1k    # one study, a few minutes
    python bench/scale.py --pace DB       # the pace by tenth of a study's store (one stopped
                                          # part-way included)
    python bench/scale.py --ab 3          # MLflow writer process vs writes in the driver's
                                          # loop, 3 alternated pairs (~15 min)
    python bench/scale.py --report DIR... [--against CHECKOUT --repeats 2]
                                          # the report alone over kept studies (--keep),
                                          # beside an older checkout's

The trials run on a simulated ``--cpus`` CPUs (Ray's logical CPUs: trials that return at
once need none), so that many trials are in flight at once, as on a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = {"1k": ["opt"], "5k": ["opt", "llama"], "20k": ["opt", "llama", "qwen2", "pythia"]}
TASKS = {"1k": ["digits", "digits-convstem"],
         "5k": ["digits", "digits-convstem", "shapes3d", "moving-digits", "shape-vqa",
                "shape-scenes-3d"],
         "20k": ["digits", "digits-convstem", "shapes3d", "moving-digits", "shape-vqa"]}
SEEDS = {"1k": ["0", "1"], "5k": ["0"], "20k": ["0", "1", "2"]}


def study_argv(name: str) -> list[str]:
    return ["--family", *FAMILIES[name], "--sizes", "all", "--layers", "all",
            "--tasks", *TASKS[name], "--controls", "pretrained", "random", "adapters", "none",
            "--seeds", *SEEDS[name], "--epochs", "1"]


def instant_trial(config: dict, **_) -> None:
    """What a trial reports at the end of its one epoch, with a checkpoint; no training."""
    from ray import tune

    with tempfile.TemporaryDirectory() as d:
        Path(d, "state.json").write_text(json.dumps({"epoch": 1}))
        value = (hash(config.get("cell_key", "")) % 1000) / 1000
        tune.report({"epoch": 1, "val_acc": value, "best_val_acc": value,
                     "train_loss": 1 - value, "val_loss": 1 - value, "lr": 1e-3},
                    checkpoint=tune.Checkpoint.from_directory(d))


def drive(argv: list[str], cpus: int, writer: str = "process") -> dict:
    """In this process: the sweep through ``orchestrator.cli.main`` with the instant trial;
    wall seconds of its phases, the driver's CPU seconds and peak RSS. ``writer="inline"``:
    the trial logger's MLflow writes made in the driver's loop, not by its writer process."""
    import ray

    from orchestrator import cli, store, tracking, tuner
    from orchestrator.cli import spec_from_args
    from orchestrator.options import build_parser
    from orchestrator.plan import build_plan
    from results import build

    seconds: dict[str, float] = defaultdict(float)

    def timed(module, name: str, label: str) -> None:
        fn = getattr(module, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[label] += time.perf_counter() - t

        setattr(module, name, wrapper)

    t = time.perf_counter()
    plan = build_plan(spec_from_args(build_parser().parse_args(argv)))
    seconds["plan"] = time.perf_counter() - t
    tuner.tune_trial = instant_trial
    if writer == "inline":
        from mlflow.tracking import MlflowClient

        from orchestrator.run_writer import InlineWriter

        tracking.ProcessWriter = lambda uri: InlineWriter(MlflowClient(uri))
    cli.preflight_weights = lambda *a, **k: None
    init = ray.init
    ray.init = lambda *a, **k: init(*a, **{**k, "num_cpus": cpus})
    timed(store, "finished_cells", "finished-cell lookup")
    timed(tuner, "_fit", "Ray Tune fit")
    timed(build, "build_report", "report")
    timed(tracking, "log_sweep_summary", "summary")
    timed(tuner, "make_searcher", "searcher")
    cpu0 = time.process_time()
    t = time.perf_counter()
    rc = cli.main(argv)
    wall = time.perf_counter() - t
    return {"trials": len(plan), "rc": rc, "wall": wall, "cpu": time.process_time() - cpu0,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "phases": dict(seconds)}


FLOOR_TRIALS = 2000


def tune_floor(n: int, cpus: int) -> dict:
    """In this process: Ray Tune alone over ``n`` instant trials, with the sweep's Tune
    settings (reused actors, a checkpoint a trial, num_to_keep=2, no Tune log files, as many
    pending trials as CPUs) and none of lmblocks (no Optuna, no MLflow, no plan): the floor
    under the driver's cost a trial on this machine. Its scheduler is the sweep's
    (``QueuedFIFOScheduler``: Tune's FIFO choice without Tune's O(trials) scan a step, which
    was 21% of this floor's driver over 6,000 trials), so that the floor grows only where the
    sweep's Tune would."""
    from orchestrator.schedulers import QueuedFIFOScheduler

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(cpus))
    import ray
    from ray import tune

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    cpu0 = time.process_time()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as storage:
        tune.Tuner(tune.with_resources(instant_trial, {"cpu": 1}),
                   param_space={"cell_key": tune.grid_search([str(i) for i in range(n)])},
                   tune_config=tune.TuneConfig(reuse_actors=True,
                                               scheduler=QueuedFIFOScheduler()),
                   run_config=tune.RunConfig(storage_path=storage, verbose=0,
                                             checkpoint_config=tune.CheckpointConfig(
                                                 num_to_keep=2))).fit()
    wall = time.perf_counter() - t
    return {"trials": n, "wall": wall, "cpu": time.process_time() - cpu0}


def timed_run(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def per_block_ms(db: Path, blocks: int = 10) -> list[tuple[int, float]]:
    """The driver's pace as the study goes: ms a trial over each tenth of its trials, from
    the trial runs' end times in the store (flat: no cost that grows with the trials done;
    also readable from a study stopped part-way)."""
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        ends = [row[0] for row in con.execute(
            "SELECT r.end_time FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "AND t.key = 'lmblocks.kind' AND t.value = 'trial' "
            "WHERE r.end_time IS NOT NULL ORDER BY r.end_time")]
    step = max(1, len(ends) // blocks)
    return [(i, (ends[i] - ends[i - step]) / step) for i in range(step, len(ends), step)]


def bench_study(name: str, cpus: int, keep: Path | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"lmblocks-scale-{name}-", dir=keep))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    argv = [*study_argv(name), "--tracking-uri", uri, "--storage", str(work / "ray"),
            "--experiment", f"scale-{name}", "--report-dir", str(work / "report"), "--quiet"]
    sweep = [sys.executable, str(ROOT / "sweep.py")]
    dry_fresh = timed_run([*sweep, *argv, "--dry-run"], work)
    proc = subprocess.run([sys.executable, __file__, "--drive", json.dumps(argv),
                           "--cpus", str(cpus)], cwd=work, capture_output=True, text=True,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"the driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1])
    out["dry_run_fresh"] = dry_fresh
    out["dry_run_store"] = timed_run([*sweep, *argv, "--dry-run"], work)
    out["report_cli"] = timed_run([sys.executable, "-m", "results.report", f"scale-{name}",
                                   "--tracking-uri", uri, "--out", str(work / "report2")], work)
    out["store_bytes"] = (work / "mlflow.db").stat().st_size
    out["per_block"] = per_block_ms(work / "mlflow.db")
    out["journal_bytes"] = sum(p.stat().st_size for p in (work / "ray").rglob("optuna.journal"))
    out["work"] = str(work)
    n = min(out["trials"], FLOOR_TRIALS)
    proc = subprocess.run([sys.executable, __file__, "--floor", str(n), "--cpus", str(cpus)],
                          cwd=work, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"Tune alone failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out["floor"] = json.loads(lines[-1])
    return out


def report_times(stores: list[Path], against: Path | None, repeats: int) -> None:
    """``lmblocks-report`` over kept studies' stores (``--keep``), each a fresh process: this
    checkout, and where ``against`` names another checkout (an older commit) that one too,
    alternated ``repeats`` times so that both see the same machine."""
    import sqlite3

    codes = {"this": ROOT, **({"against": against.resolve()} if against else {})}
    for store in stores:
        db = store / "mlflow.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            name = con.execute("SELECT name FROM experiments WHERE name LIKE 'scale-%'"
                               ).fetchone()[0]
            runs = con.execute("SELECT count(*) FROM tags WHERE key = 'lmblocks.kind' "
                               "AND value = 'trial'").fetchone()[0]
        times: dict[str, list[float]] = {k: [] for k in codes}
        for _ in range(repeats):
            for label, code in codes.items():
                out = Path(tempfile.mkdtemp(prefix="lmblocks-report-"))
                t = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "results.report", name, "--tracking-uri",
                     f"sqlite:///{db}", "--out", str(out)], cwd=out, capture_output=True,
                    text=True, check=False, env={**os.environ, "PYTHONPATH": str(code)})
                if proc.returncode:
                    raise SystemExit(f"report ({code}) failed:\n{proc.stderr[-2000:]}")
                times[label].append(time.perf_counter() - t)
        line = f"{name}: {runs} trial runs; report s, this checkout: " + " ".join(
            f"{v:.1f}" for v in times["this"])
        if against:
            ratio = min(times["this"]) / min(times["against"])
            line += (f"; {against}: " + " ".join(f"{v:.1f}" for v in times["against"])
                     + f"; best of each: x{ratio:.2f}")
        print(line, flush=True)


AB_STUDY = ["--family", "opt", "--sizes", "all", "--layers", "all", "--tasks", "digits",
            "--controls", "pretrained", "random", "adapters", "none", "--seeds", "0", "1",
            "--epochs", "1"]


def writer_ab(pairs: int, cpus: int) -> None:
    """The trial logger's MLflow writes in the driver's loop (inline) against its writer
    process, on one small study (586 trials), alternated so that both see the same machine."""
    rows = []
    for i in range(pairs):
        pair = {}
        for writer in ("inline", "process"):
            work = Path(tempfile.mkdtemp(prefix=f"lmblocks-ab-{writer}-"))
            argv = [*AB_STUDY, "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}",
                    "--storage", str(work / "ray"), "--experiment", "ab",
                    "--report-dir", str(work / "report"), "--quiet"]
            proc = subprocess.run([sys.executable, __file__, "--drive", json.dumps(argv),
                                   "--cpus", str(cpus), "--writer", writer], cwd=work,
                                  capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                raise SystemExit(f"the driver failed:\n{proc.stderr[-3000:]}")
            r = json.loads(lines[-1])
            pair[writer] = (1000 * r["phases"]["Ray Tune fit"] / r["trials"],
                            1000 * r["cpu"] / r["trials"])
        rows.append(pair)
        print(f"pair {i + 1}: fit ms a trial inline {pair['inline'][0]:.1f}, process "
              f"{pair['process'][0]:.1f} (x{pair['process'][0] / pair['inline'][0]:.2f}); "
              f"driver CPU ms a trial inline {pair['inline'][1]:.1f}, process "
              f"{pair['process'][1]:.1f} (x{pair['process'][1] / pair['inline'][1]:.2f})",
              flush=True)
    ratios = sorted(p["process"][0] / p["inline"][0] for p in rows)
    print(f"median fit ratio process/inline over {pairs} pairs: x{ratios[len(ratios) // 2]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", nargs="+", default=["1k", "5k", "20k"], choices=list(FAMILIES))
    ap.add_argument("--cpus", type=int, default=8, help="Ray's logical CPUs (default 8)")
    ap.add_argument("--keep", type=Path, help="folder for the studies' stores (default: tmp)")
    ap.add_argument("--drive", help=argparse.SUPPRESS)
    ap.add_argument("--pace", type=Path, help="print the pace by tenth of this store's study")
    ap.add_argument("--floor", type=int, help="only Ray Tune alone over this many trials")
    ap.add_argument("--writer", choices=["process", "inline"], default="process",
                    help=argparse.SUPPRESS)
    ap.add_argument("--ab", type=int, metavar="PAIRS",
                    help="only the MLflow writer process against writes in the driver's "
                         "loop, this many alternated pairs on a 586-trial study")
    ap.add_argument("--report", type=Path, nargs="+", metavar="STORE",
                    help="only time the report over these kept studies' folders")
    ap.add_argument("--against", type=Path, metavar="CHECKOUT",
                    help="with --report: time another checkout's report beside this one's")
    ap.add_argument("--repeats", type=int, default=1, help="with --report (default 1)")
    args = ap.parse_args()
    if args.report:
        report_times(args.report, args.against, args.repeats)
        return
    if args.pace:
        print(" ".join(f"{i}:{ms:.0f}" for i, ms in per_block_ms(args.pace)))
        return
    if args.drive:
        print(json.dumps(drive(json.loads(args.drive), args.cpus, args.writer)))
        return
    if args.ab:
        writer_ab(args.ab, args.cpus)
        return
    if args.floor:
        print(json.dumps(tune_floor(args.floor, args.cpus)))
        return
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; "
          f"Ray logical CPUs {args.cpus}")
    header = ("study  trials  plan_s  dry_run_s  dry_run_store_s  driver_ms/trial  "
              "driver_cpu_ms/trial  fit_ms/trial  peak_rss_MB  report_s  store_MB  journal_MB")
    rows = []
    for name in args.studies:
        r = bench_study(name, args.cpus, args.keep)
        n = r["trials"]
        rows.append(r)
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in r["phases"].items())
        print(f"\n{name}: {n} trials (rc {r['rc']}), driver {r['wall']:.0f} s wall, "
              f"{r['cpu']:.0f} s CPU; phases: {phases}\n{header}\n"
              f"{name:>5} {n:7d} {r['phases']['plan']:7.2f} {r['dry_run_fresh']:10.2f} "
              f"{r['dry_run_store']:16.2f} {1000 * r['wall'] / n:16.1f} "
              f"{1000 * r['cpu'] / n:20.1f} {1000 * r['phases']['Ray Tune fit'] / n:13.1f} "
              f"{r['peak_rss'] / 1e6:12.0f} {r['report_cli']:9.1f} "
              f"{r['store_bytes'] / 1e6:9.1f} {r['journal_bytes'] / 1e6:11.1f}\n"
              "ms a trial by tenth of the study (trials done: ms): "
              + " ".join(f"{i}:{ms:.0f}" for i, ms in r["per_block"]) + "\n"
              f"Ray Tune alone (no Optuna, no MLflow; {r['floor']['trials']} trials): "
              f"{1000 * r['floor']['wall'] / r['floor']['trials']:.1f} ms a trial, "
              f"{1000 * r['floor']['cpu'] / r['floor']['trials']:.1f} ms of driver CPU; "
              f"the sweep's driver costs x{(r['wall'] / n) / (r['floor']['wall'] / r['floor']['trials']):.2f} "
              f"its wall, x{(r['cpu'] / n) / (r['floor']['cpu'] / r['floor']['trials']):.2f} its CPU",
              flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        k = b["trials"] / a["trials"]
        print(f"\ngrowth from {a['trials']} to {b['trials']} trials ({k:.1f}x the trials): "
              f"driver per trial x{(b['wall'] / b['trials']) / (a['wall'] / a['trials']):.2f}, "
              f"dry run x{b['dry_run_fresh'] / a['dry_run_fresh']:.2f}, "
              f"report x{b['report_cli'] / a['report_cli']:.2f}, "
              f"peak RSS x{b['peak_rss'] / a['peak_rss']:.2f}")


if __name__ == "__main__":
    main()
