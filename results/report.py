"""``lmblocks-report`` (``python -m results.report``): the ablation report of one or more sweeps,
read from MLflow alone (``results/build.py`` builds it).

    lmblocks-report EXPERIMENT [EXPERIMENT ...] [--task T] [--family F]
        [--control none|adapters|random|...] [--layer last|N|A:B] [--out DIR] [--log]

The store is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///$PWD/mlflow.db``; a missing local store is an error (exit 2), never created. The
report writes files only, unless ``--log`` asks for them on the sweep's parent run too. A
report narrowed by a filter (``--task``, ``--family``, ``--parent-run``, another ``--control``,
``--layer`` or ``--metric``) goes to a folder of its own, named by its filters, and to its own
artifact folder with ``--log``: it never overwrites the full report.

This module imports neither MLflow nor pandas nor matplotlib until the arguments are parsed:
``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from encoders.lm.controls import reference_controls
from results.stores import TRACKING_ENV, ReportError, require_store, resolve_tracking_uri

PROG = "lmblocks-report"
DESCRIPTION = (
    "The ablation report of one or more lmblocks sweeps, from MLflow alone: findings (the "
    "paper's claims, each with a verdict), tables, figures, the paper's numbers beside ours, "
    "and one HTML page, written to a folder (and, with --log, to the sweep's parent run)."
)
EXIT_CODES = (
    "exit status: 0 the report was written; 2 bad input (an unknown experiment, filter, "
    "control or metric, or no MLflow store where one was expected: nothing is created): one "
    "line on stderr naming the value and the valid ones. The store is --tracking-uri, else "
    f"${TRACKING_ENV}, else sqlite:///$PWD/mlflow.db, as for lmblocks-sweep."
)
REPORTS_DIR = Path("lmblocks-reports")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, not usage + message
        raise ReportError(message)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmblocks")  # pyproject.toml's [project] name
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=DESCRIPTION, epilog=EXIT_CODES)
    p.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    p.add_argument("experiments", nargs="*",
                   help="MLflow experiment name(s) of the sweeps: a sweep records to "
                        "lmblocks-NAME (NAME: its --name, by default the preset's, e.g. "
                        "lmblocks-default) unless given --experiment")
    p.add_argument("--experiment", action="append", default=[], help="same, as a flag")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///$PWD/mlflow.db); never created if missing")
    p.add_argument("--parent-run", default=None,
                   help="only this sweep run's trials (default: every cell of the experiments)")
    p.add_argument("--task", action="append",
                   help="only these tasks (repeatable; valid: the experiments' tasks; "
                        "default: all)")
    p.add_argument("--family", action="append",
                   help="only these LM families, plus no block (repeatable; valid: the "
                        "experiments' families; default: all)")
    p.add_argument("--control", default="none",
                   help=f"compare against: {', '.join(reference_controls())} (default: none)")
    p.add_argument("--layer", default="last",
                   help="fixed layer of tables 2-3: last, N or A:B (default: last)")
    p.add_argument("--metric", default=None,
                   help="a metric the runs logged, e.g. val_acc (default: the task's metric)")
    p.add_argument("--out", default=None,
                   help="output dir (default: lmblocks-reports/EXPERIMENT, several joined "
                        "by +, then ,FILTER=VALUE for each filter given)")
    p.add_argument("--log", action="store_true",
                   help="also log the report's files to each experiment's latest sweep run "
                        "(or --parent-run), under report/ (a filtered one under "
                        "report/FILTERS); default: files only, MLflow is only read")
    return p


def filter_label(args: argparse.Namespace) -> str:
    """What narrows this report from the full one, as a folder name: "" for the full report,
    else e.g. ``task=digits,control=mlp``."""
    parts = [("parent-run", [args.parent_run] if args.parent_run else None),
             ("task", args.task), ("family", args.family),
             ("control", None if args.control == "none" else [args.control]),
             ("layer", None if args.layer == "last" else [args.layer]),
             ("metric", [args.metric] if args.metric else None)]
    label = ",".join(f"{name}={'+'.join(values)}" for name, values in parts if values)
    return "".join(c if c.isalnum() or c in "-_.=,+" else "_" for c in label)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ReportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    names = [*args.experiments, *args.experiment]
    if not names:
        print(f"{PROG}: error: no experiment given; name one or more (e.g. lmblocks-default)",
              file=sys.stderr)
        return 2
    uri = resolve_tracking_uri(args.tracking_uri)
    label = filter_label(args)
    out = Path(args.out or REPORTS_DIR / ",".join(["+".join(names), *filter(None, [label])]))
    try:
        require_store(uri)  # read-only: a missing store is an error, never created
        from mlflow.tracking import MlflowClient

        from results import build
        from results.claims import claim_lines
        from results.runs import latest_sweep_run

        log_to = None
        if args.log:
            client = MlflowClient(uri)
            log_to = [args.parent_run] if args.parent_run else [
                latest_sweep_run(client, n) for n in names]
        report = build.build_report(
            uri, names, out.resolve(), args.parent_run, log_to=log_to, tasks=args.task,
            families=args.family, control=args.control, layer=args.layer, metric=args.metric,
            log_path="/".join(["report", *filter(None, [label])]))
    except ReportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(report.table.to_markdown(index=False))
    if not report.claims.empty:
        print(*["", *claim_lines(report.claims)], sep="\n")
    print("\nreport written:", *(str(f) for f in report.files), sep="\n  ")
    if log_to:
        print(f"logged to MLflow run(s) {', '.join(log_to)} under "
              f"{'/'.join(['report', *filter(None, [label])])}/")
    return 0


if __name__ == "__main__":
    code = main()
    gc.freeze()  # nothing to collect at exit: skips the teardown's collection (seconds)
    sys.exit(code)
