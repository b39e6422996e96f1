"""``python sweep.py``: validate, plan, pre-flight the weights, run with Ray Tune, report.

Everything that can be wrong with the input is found before Ray starts or a byte of
weights is read, and reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.options import (
    EXIT_BAD_INPUT,
    HPARAM_SEARCHES,
    PROG,
    SAMPLERS,
    SCHEDULERS,
    SEARCHES,
    build_parser,
    default_experiment,
)
from orchestrator.plan_view import print_plan
from orchestrator.plugins import LoadedPlugin, check_plugin_tasks, load_plugins
from orchestrator.preflight import (
    check_storage,
    check_tracking_uri,
    preflight_data,
    preflight_encoder,
    preflight_weights,
)
from orchestrator.prescreen import check_prescreen, prescreen, ranking_lines
from orchestrator.spec import SpecError, SweepSpec, load_spec, parse_epochs

if TYPE_CHECKING:  # the estimate is imported when a dry run prints it
    from orchestrator.estimate import Assumptions


def _csv(values: list[str] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    return tuple(v for item in values for v in item.split(",") if v)


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    spec = load_spec(args.preset)
    changes: dict[str, object] = {}
    for axis in ("families", "sizes", "layers", "positions", "tasks", "controls"):
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
    if args.epochs is not None:
        changes.update(parse_epochs(args.epochs))
    for name in ("lr", "weight_decay", "batch_size", "compute_dtype", "final_norm",
                 "schedule", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "name",
                 "num_workers", "compile", "lm_lr_scale", "micro_batch"):
        if (v := getattr(args, name)) is not None:
            changes[name] = v
    for name in ("adapter_lr_scale", "clip_grad", "drop_path", "ema_decay", "repeated_aug",
                 "encoder", "encoder_weights", "image_size", "aux_weight"):
        if (v := getattr(args, name)) is not None:
            changes[name] = v
    if (train := _csv(args.encoder_train)) is not None:
        if not train:
            raise SpecError("empty --encoder-train; valid: full, frozen")
        changes["encoder_train"] = train
    changes["plugins"] = tuple(dict.fromkeys((*spec.plugins, *(args.plugin or ()))))  # both
    return spec.replace(**changes)


def estimate_assumptions(args: argparse.Namespace, plan) -> Assumptions:
    """What the dry run's estimate assumes, from the flags a real run reads: the GPU's peak
    (``--peak-tflops``, ``$LMBLOCKS_PEAK_TFLOPS``, else an H100), its memory and the shares
    (``--gpu-memory-gb``, ``--gpus-per-trial``), and how the search turns plan rows into
    trials."""
    from experiments.cost_model import assumed_gpu
    from orchestrator.estimate import ASSUMED_GPU_MEMORY_BYTES, Assumptions

    runs, notes = 1.0, []
    if args.search_hparams == "per-cell":
        runs = float(args.samples_per_cell)
        notes.append(f"--search-hparams per-cell: {args.samples_per_cell} trials per plan row, "
                     "each costed as its row")
    elif args.search == "optuna":
        n = args.num_samples or len(plan)
        runs = n / len(plan)
        notes.append(f"--search optuna: {n} trials drawn from the plan, each costed as the "
                     "plan's mean trial")
    if args.scheduler == "asha":
        notes.append("--scheduler asha stops weak trials early: the total is an upper bound")
    memory = (args.gpu_memory_gb * 1e9 if args.gpu_memory_gb is not None
              else ASSUMED_GPU_MEMORY_BYTES)
    return Assumptions(assumed_gpu(args.peak_tflops), memory, args.gpus_per_trial, runs,
                       tuple(notes))


def _dry_run(args: argparse.Namespace, spec: SweepSpec, plan) -> None:
    """The plan with each cell's status in the experiment a real run would use, read-only:
    no store is created (a local one that does not exist means every cell is new, and MLflow
    is not even imported); a store that cannot be read is one line, and the plan without."""
    from results.stores import local_store_path, resolve_tracking_uri

    experiment = args.experiment or default_experiment(spec.name)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    skips = ("skipped by a real run unless --force" if args.search == "grid" else
             f"not skipped: --search {args.search}")
    if args.force:
        skips = "run again: --force"
    assumptions = estimate_assumptions(args, plan)
    path = local_store_path(tracking_uri)
    if path is not None and not path.exists():
        status = {}
    else:
        status = _store_status(tracking_uri, experiment)
    print_plan(plan, status, skips, assumptions)
    if args.prescreen is not None:
        print(*ranking_lines(args.prescreened, args.prescreen), sep="\n")


def _store_status(tracking_uri: str, experiment: str) -> dict[str, str] | None:
    """Each cell's status in the store, or None (one line said why) when it cannot be read."""
    import os

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})  # no minutes of
    try:  # retries against a server that is down: a dry run answers at once
        from orchestrator.store import cell_status

        status = cell_status(tracking_uri, experiment)
    except Exception as e:  # noqa: BLE001 -- any failure to read leaves the plan to show
        lines = str(e).strip().splitlines()
        why = (lines[0] if lines else type(e).__name__)[:200]
        print(f"status in experiment {experiment!r} unknown: cannot read the MLflow store "
              f"{tracking_uri!r} ({why})")
        status = None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
    return status


def _check_peak_env(peak_tflops: float | None) -> None:
    """``$LMBLOCKS_PEAK_TFLOPS`` (what trials take for the GPU's peak unless
    ``--peak-tflops`` is given, and the dry run's estimate too) is a number > 0 when set."""
    from experiments.gpu_peaks import PEAK_TFLOPS_ENV, peak_flops

    if peak_tflops is not None:  # the flag wins; the environment is not read
        return
    try:
        peak = peak_flops("")
    except ValueError as e:
        raise SpecError(str(e)) from None
    if peak is not None and not peak > 0:
        raise SpecError(f"{PEAK_TFLOPS_ENV} must be positive (got {peak / 1e12:g})")


def _resume(args: argparse.Namespace) -> int:
    from orchestrator.tuner import SWEEP_FILE, resume_sweep

    path = Path(args.resume).resolve()
    if not (path / SWEEP_FILE).is_file():
        raise SpecError(f"--resume {args.resume!r}: not a sweep folder (no {SWEEP_FILE}); valid: "
                        "the 'Ray Tune results' folder a sweep printed, under --storage")
    outcome = resume_sweep(path, address=args.address, quiet=args.quiet,
                           verbose=args.verbose)
    return _finish(outcome, args)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.resume is not None:
            return _resume(args)
        spec = spec_from_args(args)
        plugins = load_plugins(spec.plugins)  # installed ones, then the sweep's own
        check_plugin_tasks(plugins, spec.tasks)
        from orchestrator.plan import build_plan

        plan = build_plan(spec)
        # One validation path: --dry-run rejects everything a real run rejects, with the same
        # line; only what a plan does not need may be absent: the weights, and the data when
        # no --data-dir is given (a given one is checked).
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
        _check_peak_env(args.peak_tflops)
        from orchestrator.estimate import ASSUMED_GPU_MEMORY_BYTES
        from orchestrator.resources import (
            check_data_parallel,
            check_fits,
            check_gpus_per_trial,
            data_parallel_workers,
        )

        check_gpus_per_trial(args.gpus_per_trial)
        workers = data_parallel_workers(args.gpus_per_trial)
        check_data_parallel(plan, workers)
        check_fits(plan, args.gpu_memory_gb * 1e9 if args.gpu_memory_gb else
                   ASSUMED_GPU_MEMORY_BYTES, workers)
        if args.search_hparams not in (None, *HPARAM_SEARCHES):
            raise SpecError(f"unknown --search-hparams {args.search_hparams!r}; "
                            f"valid: {', '.join(HPARAM_SEARCHES)}")
        needs = {"joint": "optuna", "per-cell": "grid"}.get(args.search_hparams, args.search)
        if args.search != needs:
            raise SpecError(f"--search-hparams {args.search_hparams} needs --search {needs} "
                            f"(got --search {args.search})")
        if args.samples_per_cell < 1:
            raise SpecError(f"--samples-per-cell must be positive (got {args.samples_per_cell})")
        check_prescreen(args.prescreen)
        if (checked := preflight_encoder(spec, args.data_dir)) is not spec:
            spec, plan = checked, build_plan(checked)  # the weights' sha256 in every key
        if not args.dry_run or args.data_dir is not None:
            preflight_data(plan, args.data_dir)
        from results.stores import tracking_uri_and_source

        check_tracking_uri(*tracking_uri_and_source(args.tracking_uri))
        check_storage(args.storage)
        if args.prescreen is not None:  # measured before anything trains: needs the weights
            preflight_weights(plan, args.weights_dir)
            plan, args.prescreened = prescreen(plan, args.prescreen, args.weights_dir,
                                               args.data_dir)
        if args.dry_run:
            _dry_run(args, spec, plan)
            return 0
        preflight_weights(plan, args.weights_dir)
    except SpecError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from orchestrator.store import TrackingStoreError

    try:
        return _run(args, spec, plan, plugins)
    except (TrackingStoreError, SpecError) as e:  # the store cannot be opened, the cluster
        # cannot hold a trial: one line, nothing lost
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(args: argparse.Namespace, spec: SweepSpec, plan, plugins: list[LoadedPlugin]) -> int:
    """The validated sweep: skip finished cells, run the rest, report."""
    from orchestrator.store import finished_cells
    from orchestrator.tuner import run_sweep
    from results.build import build_report
    from results.stores import resolve_tracking_uri

    experiment = args.experiment or default_experiment(spec.name)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
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
            _print_results(report)
            print(f"\nnothing to run; report: {report_dir / 'report.html'}")
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
        verbose=args.verbose,
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
        plugins=plugins,
    )
    return _finish(outcome, args)


def _browse(tracking_uri: str, experiment: str) -> str:
    """How to look at the runs: the link opens MLflow's runs table (not its GenAI view)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store import runs_page

    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    page = runs_page(tracking_uri, found.experiment_id if found else "0")
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then open {page}"


def _print_results(report) -> None:
    """What the sweep found, findings first: the claims' lines (none when its cells test no
    claim), then the full control table (task x control, the pretrained block at the last
    layer, every delta against the no-block column shown beside it), then the metric by
    layer when the sweep ran more than one layer."""
    from results.claims import claim_lines

    if not report.claims.empty:
        print(*claim_lines(report.claims), sep="\n")
    controls, layers = report.tables.get("by_control"), report.tables.get("by_layer")
    if controls is not None and not controls.empty:
        from results.tables import without_empty_columns

        print("\nControls (mean ± std over seeds; Δ: paired difference from no block):")
        print(without_empty_columns(controls).to_markdown(index=False))
    if layers is not None and len(layers) > 1:
        print("\nPretrained block by layer:")
        print(layers.to_markdown(index=False))
    if (controls is None or controls.empty) and (layers is None or layers.empty):
        print(report.table.to_markdown(index=False))


def _finish(outcome, args: argparse.Namespace) -> int:
    """The report, then one line per trial that failed in this sweep run (read from MLflow:
    right after retries and --resume too), then where everything is; exit 1 if any failed."""
    from orchestrator.failures import ERROR_ARTIFACT, failed_trials
    from orchestrator.tracking import log_sweep_summary
    from results.build import build_report

    experiment, tracking_uri = outcome.experiment, outcome.tracking_uri
    report_dir = Path(args.report_dir or Path("lmblocks-reports") / experiment).resolve()
    from results.claims import claim_lines

    if getattr(args, "prescreened", None) is not None:  # the report tables it
        from orchestrator.prescreen import log_prescreen

        log_prescreen(tracking_uri, outcome.parent_run_id, args.prescreened)
    report = build_report(tracking_uri, experiment, report_dir, log_to=outcome.parent_run_id)
    log_sweep_summary(tracking_uri, outcome.parent_run_id, report,
                      claim_lines(report.claims) if not report.claims.empty else [])
    failures = failed_trials(tracking_uri, outcome.parent_run_id)
    print()
    _print_results(report)
    print(f"\n{outcome.finished} trials finished, {outcome.failed} failed in "
          f"{outcome.seconds:.0f} s")
    for failure in failures:
        print(failure.line())
    if failures:
        print(f"  (each failed run's whole error text: its artifact {ERROR_ARTIFACT})")
    print(
        f"MLflow: experiment {experiment!r}, sweep run {outcome.parent_run_id} at {tracking_uri}"
        f"\n  browse: {_browse(tracking_uri, experiment)}"
        f"\nRay Tune results: {outcome.storage}"
        f"\nreport: {report_dir / 'report.html'} (tables, figures: {report_dir})"
    )
    return 1 if outcome.failed or failures else 0
