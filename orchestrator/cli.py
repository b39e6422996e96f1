"""``python sweep.py``: validate, plan, pre-flight the weights, run with Ray Tune, report.

Everything that can be wrong with the input is found before Ray starts or a byte of
weights is read, and reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.preflight import (
    check_storage,
    check_tracking_uri,
    preflight_data,
    preflight_weights,
)
from orchestrator.spec import SpecError, SweepSpec, list_presets, load_spec

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        raise SpecError(message)


def _csv(values: list[str] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    return tuple(v for item in values for v in item.split(",") if v)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sweep", description="Layer-sweep ablations of frozen LM blocks in visual encoders.")
    p.add_argument("--preset", default="default",
                   help=f"preset name ({', '.join(list_presets())}) or a YAML file")
    g = p.add_argument_group("sweep axes (override the preset; comma or space separated)")
    g.add_argument("--family", "--families", dest="families", nargs="+")
    g.add_argument("--sizes", nargs="+", help="sizes, 'all' or 'default'")
    g.add_argument("--layers", nargs="+", help="last, all, 5, -1, 2..5 (one trial each), 3:5 (a span)")
    g.add_argument("--tasks", nargs="+")
    g.add_argument("--controls", nargs="+", help="pretrained, random, adapters, none, mlp, "
                   "random-trained, finetuned, visual-block")
    g.add_argument("--seeds", nargs="+")
    h = p.add_argument_group("hyperparameters")
    h.add_argument("--epochs", type=int)
    h.add_argument("--lr", type=float)
    h.add_argument("--weight-decay", type=float)
    h.add_argument("--batch-size", type=int)
    h.add_argument("--compute-dtype")
    h.add_argument("--schedule", help="learning rate after warm-up: constant or cosine")
    h.add_argument("--warmup-epochs", type=float)
    h.add_argument("--label-smoothing", type=float)
    h.add_argument("--mixup", type=float, help="Mixup alpha (0: off)")
    h.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    h.add_argument("--adapter-lr-scale", type=float,
                   help="the two linear maps' lr / lr (official point-cloud code: 0.5)")
    h.add_argument("--clip-grad", type=float, help="max global gradient norm (0: off)")
    h.add_argument("--drop-path", type=float,
                   help="stochastic depth of the encoder's timm blocks, 0 -> this rate at the "
                        "last block (0: off)")
    h.add_argument("--ema-decay", type=float,
                   help="timm ModelEmaV3 of the weights, evaluated alongside as ema_* "
                        "metrics (0: off; DeiT: 0.99996)")
    h.add_argument("--repeated-aug", type=int,
                   help="repeated augmentation: copies of each sampled image per epoch "
                        "(0 or 1: off; DeiT: 3)")
    h.add_argument("--num-workers",
                   help="DataLoader worker processes per trial: auto (default: none for "
                        "embedded data, else the trial's CPUs but one) or a count")
    h.add_argument("--compile", action="store_true", default=None,
                   help="run the model (visual encoder + block) under torch.compile")
    h.add_argument("--final-norm", nargs="?", const="lm", metavar="none|unit-rms|lm",
                   help="after the LM layers: none (default), unit-rms (the official code's "
                        "gain-1 RMSNorm) or lm (the LM's own trained norm; bare --final-norm: "
                        "lm); recorded as the run's final_norm param")
    h.add_argument("--lm-lr-scale", type=float,
                   help="the LM layers' lr / lr where a control trains them (finetuned, "
                        "random-trained; default 1)")
    r = p.add_argument_group("where it runs and records")
    r.add_argument("--name", help="sweep name (default: the preset's)")
    r.add_argument("--experiment", help="MLflow experiment (default: the sweep name)")
    r.add_argument("--weights-dir", help="folder of checkpoints: DIR/facebook/opt-125m, ...")
    r.add_argument("--data-dir", help="dataset folder for tasks with real data (modelnet40, ...)")
    r.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    r.add_argument("--storage", help="Ray results/checkpoints (default: ./lmblocks-runs)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite ./mlflow.db)")
    r.add_argument("--report-dir", help="where the report goes (default: ./lmblocks-reports/NAME)")
    r.add_argument("--dry-run", action="store_true", help="print the trial plan and exit")
    r.add_argument("--resume", metavar="RAY_EXPERIMENT_DIR",
                   help="continue an interrupted sweep (the 'Ray Tune results' folder it printed)")
    r.add_argument("--force", action="store_true",
                   help="rerun cells that already have a FINISHED run in the experiment")
    r.add_argument("--quiet", action="store_true", help="no Ray progress output")
    s = p.add_argument_group("search and scheduling")
    s.add_argument("--search", default="grid", help="grid (every plan row once) or optuna")
    s.add_argument("--sampler", default="tpe", help="optuna sampler: tpe, random, cmaes, gp, qmc")
    s.add_argument("--num-samples", type=int, help="trials for --search optuna (default: plan size)")
    s.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    s.add_argument("--scheduler", default="fifo", help="fifo, or asha (early-stop weak trials)")
    s.add_argument("--search-hparams", nargs="?", const="joint", metavar="joint|per-cell",
                   help="search lr, weight decay and adapter init: 'joint' (with --search "
                        "optuna: more axes of the one search) or 'per-cell' (with --search grid: "
                        "a search of its own for every plan row)")
    s.add_argument("--samples-per-cell", type=int, default=4,
                   help="trials per plan row with --search-hparams per-cell (default 4)")
    r.add_argument("--gpus-per-trial", type=float,
                   help="GPU share of every trial (default: from the block's memory)")
    r.add_argument("--cpus-per-trial", type=int,
                   help="CPUs per trial (default: 1 on a CPU cluster; on GPUs the node's CPUs "
                        "divided by the trials its GPUs hold)")
    r.add_argument("--peak-tflops", type=float,
                   help="the GPU's dense bf16 peak, TFLOP/s, for MFU (default: a table of known "
                        "GPUs; env LMBLOCKS_PEAK_TFLOPS)")
    r.add_argument("--gpu-memory-gb", type=float,
                   help="memory of the cluster's GPUs (default: the driver's GPU, else 80)")
    r.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failed trial from its last checkpoint (default 2)")
    return p


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    spec = load_spec(args.preset)
    changes: dict[str, object] = {}
    for axis in ("families", "sizes", "layers", "tasks", "controls"):
        if (v := _csv(getattr(args, axis))) is not None:
            if not v:
                flag = "--family" if axis == "families" else f"--{axis}"
                raise SpecError(f"empty {flag}; valid: one or more values (see --help)")
            changes[axis] = v
    if "families" in changes and "sizes" not in changes and set(changes["families"]) != set(
        spec.families
    ):
        changes["sizes"] = ("default",)  # the preset's sizes belong to the preset's families
    if (seeds := _csv(args.seeds)) is not None and not seeds:
        raise SpecError("empty --seeds; valid: one or more integers")
    if seeds is not None:
        try:
            changes["seeds"] = tuple(int(s) for s in seeds)
        except ValueError:
            raise SpecError(f"bad seeds {list(seeds)}; valid: integers") from None
    for name in ("epochs", "lr", "weight_decay", "batch_size", "compute_dtype", "final_norm",
                 "schedule", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "name",
                 "num_workers", "compile", "lm_lr_scale"):
        if (v := getattr(args, name)) is not None:
            changes[name] = v
    for name in ("adapter_lr_scale", "clip_grad", "drop_path", "ema_decay", "repeated_aug"):
        if (v := getattr(args, name)) is not None:
            changes[name] = v
    return spec.replace(**changes)


def print_plan(plan) -> None:
    from orchestrator.plan import human_bytes, plan_table, size_table

    table = plan_table(plan)
    shown = table.assign(
        block_params=table["block_params"].map(lambda n: f"{n:,}"),
        read_bytes=table["read_bytes"].map(human_bytes),
    )
    print(shown.to_string(index=False))
    print(
        f"\n{len(table)} trials; LM-layer-sized block parameters "
        f"{table['block_params'].sum():,}; "
        f"weights to read {human_bytes(table['read_bytes'].sum())} "
        f"({human_bytes(table.drop_duplicates(['family', 'size', 'layers'])['read_bytes'].sum())}"
        " distinct)"
    )
    sizes = size_table(plan)
    if not sizes.empty:
        print("\nper size: one layer read vs the whole checkpoint")
        print(sizes.assign(
            layer_bytes=sizes["layer_bytes"].map(human_bytes),
            checkpoint_bytes=sizes["checkpoint_bytes"].map(human_bytes),
            layer_share=sizes["layer_share"].map(lambda r: f"{r:.2%}"),
        ).to_string(index=False))


def _resume(args: argparse.Namespace) -> int:
    from orchestrator.tuner import SWEEP_FILE, resume_sweep

    path = Path(args.resume).resolve()
    if not (path / SWEEP_FILE).is_file():
        raise SpecError(f"--resume {args.resume!r}: not a sweep folder (no {SWEEP_FILE}); valid: "
                        "the 'Ray Tune results' folder a sweep printed, under --storage")
    outcome = resume_sweep(path, address=args.address, quiet=args.quiet)
    return _finish(outcome, args)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.resume is not None:
            return _resume(args)
        spec = spec_from_args(args)
        from orchestrator.plan import build_plan

        plan = build_plan(spec)
        # One validation path: --dry-run rejects everything a real run rejects, with the same
        # line; only what a plan does not need may be absent: the weights, and the data when
        # no --data-dir is given (a given one is checked).
        from orchestrator.search import HPARAM_SEARCHES, SAMPLERS, SEARCHES
        from orchestrator.tuner import SCHEDULERS

        for flag, value, valid in (("search", args.search, SEARCHES),
                                   ("sampler", args.sampler, tuple(SAMPLERS)),
                                   ("scheduler", args.scheduler, SCHEDULERS)):
            if value not in valid:
                raise SpecError(f"unknown --{flag} {value!r}; valid: {', '.join(valid)}")
        for flag, value in (("num-samples", args.num_samples),
                            ("max-concurrent", args.max_concurrent),
                            ("max-failures", args.max_failures)):
            if value is not None and value < (0 if flag == "max-failures" else 1):
                raise SpecError(f"--{flag} must be positive (got {value})")
        for flag, value in (("gpus-per-trial", args.gpus_per_trial),
                            ("gpu-memory-gb", args.gpu_memory_gb),
                            ("cpus-per-trial", args.cpus_per_trial),
                            ("peak-tflops", args.peak_tflops)):
            if value is not None and value <= 0:
                raise SpecError(f"--{flag} must be positive (got {value})")
        if args.search_hparams not in (None, *HPARAM_SEARCHES):
            raise SpecError(f"unknown --search-hparams {args.search_hparams!r}; "
                            f"valid: {', '.join(HPARAM_SEARCHES)}")
        needs = {"joint": "optuna", "per-cell": "grid"}.get(args.search_hparams, args.search)
        if args.search != needs:
            raise SpecError(f"--search-hparams {args.search_hparams} needs --search {needs} "
                            f"(got --search {args.search})")
        if args.samples_per_cell < 1:
            raise SpecError(f"--samples-per-cell must be positive (got {args.samples_per_cell})")
        if not args.dry_run or args.data_dir is not None:
            preflight_data(plan, args.data_dir)
        from results.runs import default_tracking_uri

        check_tracking_uri(args.tracking_uri or default_tracking_uri())
        check_storage(args.storage)
        if args.dry_run:
            print_plan(plan)
            return 0
        preflight_weights(plan, args.weights_dir)
    except SpecError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from orchestrator.tracking import TrackingStoreError

    try:
        return _run(args, spec, plan)
    except TrackingStoreError as e:  # the store cannot be opened: one line, nothing lost
        print(f"sweep: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(args: argparse.Namespace, spec: SweepSpec, plan) -> int:
    """The validated sweep: skip finished cells, run the rest, report."""
    from orchestrator.tracking import finished_cells
    from orchestrator.tuner import run_sweep
    from results.report import build_report
    from results.runs import default_tracking_uri

    experiment = args.experiment or spec.name
    tracking_uri = args.tracking_uri or default_tracking_uri()
    storage = args.storage or str(Path("lmblocks-runs").resolve())
    report_dir = Path(args.report_dir or Path("lmblocks-reports") / experiment).resolve()
    if not args.force and args.search == "grid":
        done = finished_cells(tracking_uri, experiment)
        runs_per_cell = args.samples_per_cell if args.search_hparams == "per-cell" else 1
        todo = [t for t in plan if done[t.key] < runs_per_cell]
        if len(todo) < len(plan):
            print(f"{len(plan) - len(todo)} of {len(plan)} trials already FINISHED in experiment "
                  f"{experiment!r}: skipped (--force reruns them)")
        if not todo:
            report = build_report(tracking_uri, experiment, report_dir)
            print(report.table.to_markdown(index=False))
            print(f"\nnothing to run; report: {report_dir}")
            return 0
        plan = todo
    outcome = run_sweep(
        spec,
        plan,
        tracking_uri=tracking_uri,
        experiment=experiment,
        storage=storage,
        address=args.address,
        weights_dir=str(Path(args.weights_dir).resolve()) if args.weights_dir else None,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        quiet=args.quiet,
        max_failures=args.max_failures,
        search=args.search,
        sampler=args.sampler,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        search_hparams=args.search_hparams,
        samples_per_cell=args.samples_per_cell,
        gpus_per_trial=args.gpus_per_trial,
        gpu_memory_gb=args.gpu_memory_gb,
        cpus_per_trial=args.cpus_per_trial,
        peak_tflops=args.peak_tflops,
    )
    return _finish(outcome, args)


def _finish(outcome, args: argparse.Namespace) -> int:
    """The report, then one line per trial that failed in this sweep run (read from MLflow:
    right after retries and --resume too), then where everything is; exit 1 if any failed."""
    from orchestrator.failures import ERROR_ARTIFACT, failed_trials
    from results.report import build_report

    experiment, tracking_uri = outcome.experiment, outcome.tracking_uri
    report_dir = Path(args.report_dir or Path("lmblocks-reports") / experiment).resolve()
    report = build_report(tracking_uri, experiment, report_dir, log_to=outcome.parent_run_id)
    failures = failed_trials(tracking_uri, outcome.parent_run_id)
    print()
    print(report.table.to_markdown(index=False))
    if not report.claims.empty:
        from results.claims import claim_lines

        print(*["", *claim_lines(report.claims)], sep="\n")
    print(f"\n{outcome.finished} trials finished, {outcome.failed} failed in "
          f"{outcome.seconds:.0f} s")
    for failure in failures:
        print(failure.line())
    if failures:
        print(f"  (each failed run's whole error text: its artifact {ERROR_ARTIFACT})")
    print(
        f"MLflow: experiment {experiment!r}, sweep run {outcome.parent_run_id} at {tracking_uri}"
        f"\n  browse: mlflow ui --backend-store-uri {tracking_uri}"
        f"\nRay Tune results: {outcome.storage}"
        f"\nreport: {report_dir}"
    )
    return 1 if outcome.failed or failures else 0
