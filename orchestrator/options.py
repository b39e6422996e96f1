"""The sweep's command line: its flags, each with its valid values and where its default comes
from, the program's name and version, and its exit codes.

Building the parser imports neither torch nor Ray nor Optuna (a bad flag is answered at once):
the registries it lists are plain data (families, the task catalog, the controls table); the
search and scheduler names are written here, since their modules import Ray and Optuna, and
``tests/test_cli.py`` checks them against those modules.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

import encoders.lm.families  # noqa: F401  (registers the families: plain data)
from encoders.lm.block_options import FINAL_NORMS
from encoders.lm.controls import list_controls
from encoders.lm.registry import list_families
from experiments.tasks.catalog import CATALOG
from experiments.trial import DTYPES, ENCODER_TRAIN, SCHEDULES, Hyperparameters
from orchestrator.spec import SpecError, list_presets

PROG = "lmblocks-sweep"
DISTRIBUTION = "lmblocks"  # pyproject.toml's [project] name
EXPERIMENT_PREFIX = "lmblocks-"  # never MLflow's own "Default"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

SEARCHES = ("grid", "optuna")  # orchestrator.search
SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc")
HPARAM_SEARCHES = ("joint", "per-cell")
SCHEDULERS = ("fifo", "asha")  # orchestrator.tuner

EXIT_CODES = (
    "exit status: 0 every trial finished (or was already finished); 1 some trials failed "
    "(one line each, their runs FAILED in MLflow); 2 bad input: one line on stderr naming the "
    "value and the valid ones, nothing started."
)


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def default_experiment(sweep_name: str) -> str:
    """The MLflow experiment a sweep records to unless ``--experiment`` names one."""
    return f"{EXPERIMENT_PREFIX}{sweep_name}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        raise SpecError(message)


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def _tasks(embedded: bool) -> tuple[str, ...]:
    return tuple(name for name, row in CATALOG.items() if row.embedded == embedded)


def _preset(field: str) -> str:
    """Where a hyperparameter's default comes from: the preset, else the built-in value."""
    return f"default: the preset's, else {getattr(Hyperparameters(), field)}"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, epilog=EXIT_CODES,
                description="Layer-sweep ablations of frozen LM blocks in visual encoders: "
                            "validate, plan, run every trial with Ray Tune, record it in "
                            "MLflow, report.")
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    p.add_argument("--preset", default="default",
                   help=f"preset name ({_one_of(tuple(list_presets()))}) or a YAML file with "
                        "the same fields (default: default)")
    p.add_argument("--plugin", action="append", metavar="MODULE_OR_PATH",
                   help="a plugin registering tasks, LM families or controls, besides the "
                        "installed ones (entry points of lmblocks.plugins): a dotted module "
                        "importable from here, or a .py file or package folder (Ray ships it "
                        "to the workers); repeatable; added to the preset's plugins")
    g = p.add_argument_group(
        "sweep axes", "each overrides the preset's value (default: the preset's); values "
        "comma or space separated")
    g.add_argument("--family", "--families", dest="families", nargs="+",
                   help=f"LM families: {_one_of(tuple(list_families()))}")
    g.add_argument("--sizes", nargs="+",
                   help="a family's sizes (e.g. opt: 125m 350m 1.3b ...; --dry-run and the "
                        "docs list them), all, or default (the family's default size; what "
                        "a --family other than the preset's gets)")
    g.add_argument("--layers", nargs="+",
                   help="last, all, 5, -1 (from the end), 2..5 (one trial each), 3:5 (layers "
                        "3 and 4 as one span)")
    g.add_argument("--positions", nargs="+",
                   help="where the block runs in the encoder (one trial each): end (after its "
                        "last block, the default), middle, start (before its first), i (after "
                        "block i, 0-based), -k (after the k-th from the end), all",
                   metavar="POSITION")
    g.add_argument("--tasks", nargs="+",
                   help=f"embedded: {_one_of(_tasks(embedded=True))}; real data under "
                        f"--data-dir: {_one_of(_tasks(embedded=False))}; and the plugins' "
                        "(see --plugin); one sweep's tasks share one metric")
    g.add_argument("--controls", nargs="+", help=_one_of(tuple(list_controls())))
    g.add_argument("--seeds", nargs="+", help="integers 0..2147483647, one trial each")
    e = p.add_argument_group(
        "your own encoder", "the visual encoder's model, starting weights and training (each "
        "overrides the preset's value; default: the task's own encoder, from scratch, trained)")
    e.add_argument("--encoder", metavar="TIMM_MODEL",
                   help="task images: any timm model with a blocks sequence (vit_*, deit_*, "
                        "eva02_*, beit_*, cait_*, ...), e.g. deit_small_patch16_224")
    e.add_argument("--encoder-weights", metavar="FILE",
                   help="the encoder's starting weights: a safetensors file or a torch.save "
                        "state dict, local or an fsspec URL (never the hub); tasks whose "
                        "encoder is a timm model")
    e.add_argument("--encoder-train", nargs="+", metavar="|".join(ENCODER_TRAIN),
                   help="full (the encoder trains) or frozen (only the adapters, the head and "
                        "what the control trains learn); both: one trial each")
    e.add_argument("--image-size", type=int,
                   help="task images: input size in pixels, an integer >= 1 (default: the "
                        "model's pretrained_cfg)")
    h = p.add_argument_group("hyperparameters", "each overrides the preset's value")
    h.add_argument("--epochs", metavar="N|auto:MAX",
                   help="an integer >= 1, or auto:MAX: each trial stops when the claims' "
                        "plateau rule finds it converged (and it has left chance), at most "
                        f"MAX epochs ({_preset('epochs')})")
    h.add_argument("--lr", type=float,
                   help=f"peak learning rate, a finite number > 0 ({_preset('lr')})")
    h.add_argument("--weight-decay", type=float,
                   help=f"AdamW weight decay, a number >= 0 ({_preset('weight_decay')})")
    h.add_argument("--batch-size", type=int, help=f"an integer >= 1 ({_preset('batch_size')})")
    h.add_argument("--compute-dtype", metavar="|".join(DTYPES),
                   help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16 or float16 "
                        f"({_preset('compute_dtype')})")
    h.add_argument("--schedule", metavar="|".join(SCHEDULES),
                   help=f"learning rate after warm-up: {_one_of(SCHEDULES)} "
                        f"({_preset('schedule')})")
    h.add_argument("--warmup-epochs", type=float,
                   help=f"linear warm-up epochs, a number >= 0 ({_preset('warmup_epochs')})")
    h.add_argument("--label-smoothing", type=float,
                   help=f"a number in [0, 1) ({_preset('label_smoothing')})")
    h.add_argument("--mixup", type=float,
                   help=f"Mixup alpha, a number >= 0; 0: off ({_preset('mixup')})")
    h.add_argument("--cutmix", type=float,
                   help=f"CutMix alpha, a number >= 0; 0: off ({_preset('cutmix')})")
    h.add_argument("--adapter-lr-scale", type=float,
                   help="the two linear maps' lr / lr, a number > 0 (official point-cloud "
                        f"code: 0.5; {_preset('adapter_lr_scale')})")
    h.add_argument("--clip-grad", type=float,
                   help=f"max global gradient norm, a number >= 0; 0: off "
                        f"({_preset('clip_grad')})")
    h.add_argument("--drop-path", type=float,
                   help="stochastic depth of the encoder's timm blocks, 0 -> this rate at the "
                        f"last block, a number in [0, 1); 0: off ({_preset('drop_path')})")
    h.add_argument("--ema-decay", type=float,
                   help="timm ModelEmaV3 of the weights, evaluated alongside as ema_* "
                        f"metrics, a number in [0, 1); 0: off; DeiT: 0.99996 "
                        f"({_preset('ema_decay')})")
    h.add_argument("--repeated-aug", type=int,
                   help="repeated augmentation: copies of each sampled image per epoch, an "
                        f"integer >= 0; 0 or 1: off; DeiT: 3 ({_preset('repeated_aug')})")
    h.add_argument("--num-workers",
                   help="DataLoader worker processes per trial: auto (none for embedded data "
                        "or on a CPU device, else the trial's CPUs but one) or an integer >= 0 "
                        f"({_preset('num_workers')})")
    h.add_argument("--micro-batch",
                   help="samples per forward: --batch-size stays the global batch, split "
                        "into batch/micro micro-batches per optimizer step (gradient "
                        "accumulation); auto (the largest that fits the GPU; the whole batch "
                        "on a CPU) or a divisor of the batch size "
                        f"({_preset('micro_batch')})")
    h.add_argument("--compile", action="store_true", default=None,
                   help="run the model (visual encoder + block) under torch.compile "
                        "(default: the preset's, else off)")
    h.add_argument("--final-norm", nargs="?", const="lm", metavar="|".join(FINAL_NORMS),
                   help="after the LM layers: none, unit-rms (the official code's gain-1 "
                        "RMSNorm) or lm (the LM's own trained norm; bare --final-norm: lm); "
                        f"recorded as the run's final_norm param ({_preset('final_norm')})")
    h.add_argument("--lm-lr-scale", type=float,
                   help="the LM layers' lr / lr where a control trains them (finetuned, "
                        f"random-trained), a number > 0 ({_preset('lm_lr_scale')})")
    h.add_argument("--aux-weight", type=float,
                   help="the auxiliary control's branch loss weight, x the task's loss "
                        f"(Bai et al.), a number > 0 ({_preset('aux_weight')})")
    r = p.add_argument_group("where it runs and records")
    r.add_argument("--name", help="sweep name (default: the preset's name)")
    r.add_argument("--experiment",
                   help=f"MLflow experiment, used as given (default: {EXPERIMENT_PREFIX}NAME, "
                        "e.g. lmblocks-default)")
    r.add_argument("--weights-dir",
                   help="folder or fsspec URL of checkpoints: DIR/facebook/opt-125m, ... "
                        "(default: the Hugging Face cache, then the hub)")
    r.add_argument("--data-dir",
                   help="dataset folder of tasks with real data (modelnet40, ...; default: "
                        "none, embedded tasks only)")
    r.add_argument("--address",
                   help="Ray cluster address, or auto (the cluster ray start runs here) "
                        "(default: $RAY_ADDRESS, else a local Ray of the sweep's own)")
    r.add_argument("--storage",
                   help="Ray results/checkpoints: a folder or a URL (default: ./lmblocks-runs)")
    r.add_argument("--tracking-uri",
                   help="MLflow tracking URI: sqlite:///FILE, file:, http(s):, postgresql:, ... "
                        "(default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    r.add_argument("--report-dir",
                   help="where the report goes (default: ./lmblocks-reports/EXPERIMENT)")
    r.add_argument("--dry-run", action="store_true", help="print the trial plan and exit")
    r.add_argument("--resume", metavar="RAY_EXPERIMENT_DIR",
                   help="continue an interrupted sweep (the 'Ray Tune results' folder it printed)")
    r.add_argument("--force", action="store_true",
                   help="rerun cells that already have a FINISHED run in the experiment")
    r.add_argument("--quiet", action="store_true",
                   help="no progress line and no trial output (the results at the end only)")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="also Ray's, Optuna's and MLflow's own log lines (default: only the "
                        "sweep's: progress, findings, tables, failed trials, paths)")
    s = p.add_argument_group("search and scheduling")
    s.add_argument("--search", default="grid", metavar="|".join(SEARCHES),
                   help="grid (every plan row once; default) or optuna")
    s.add_argument("--sampler", default="tpe", metavar="|".join(SAMPLERS),
                   help=f"optuna sampler: {_one_of(SAMPLERS)} (default: tpe)")
    s.add_argument("--num-samples", type=int,
                   help="trials for --search optuna, an integer >= 1 (default: plan size)")
    s.add_argument("--max-concurrent", type=int,
                   help="at most this many trials at once, an integer >= 1 (default: as many "
                        "as the cluster holds)")
    s.add_argument("--scheduler", default="fifo", metavar="|".join(SCHEDULERS),
                   help="fifo (default), or asha (early-stop weak trials)")
    s.add_argument("--search-hparams", nargs="?", const="joint",
                   metavar="|".join(HPARAM_SEARCHES),
                   help="search lr, weight decay and adapter init: 'joint' (with --search "
                        "optuna: more axes of the one search; bare --search-hparams) or "
                        "'per-cell' (with --search grid: a search of its own for every plan "
                        "row); default: off")
    s.add_argument("--prescreen", type=int, metavar="K",
                   help="before training, rank every pretrained cell (LM, size, layer, "
                        "position) by its block's initial linear CKA with its input (Bai et "
                        "al.; one probe batch each) and train only the top K per task, with "
                        "the other controls; the dry run prints the ranking (reads weights)")
    s.add_argument("--samples-per-cell", type=int, default=4,
                   help="trials per plan row with --search-hparams per-cell, an integer >= 1 "
                        "(default 4)")
    r.add_argument("--gpus-per-trial", type=float,
                   help="GPUs of every trial: a share in (0, 1], or a whole number N >= 2 "
                        "(N data-parallel workers through Ray Train; CPU workers with gloo "
                        "on a cluster without GPUs) (default: a share from the step's memory)")
    r.add_argument("--cpus-per-trial", type=int,
                   help="CPUs per trial, an integer >= 1 (default: 1 on a CPU cluster; on GPUs "
                        "the node's CPUs divided by the trials its GPUs hold)")
    r.add_argument("--peak-tflops", type=float,
                   help="the GPU's dense bf16 peak, TFLOP/s, for MFU, a number > 0 (default: "
                        "a table of known GPUs; env LMBLOCKS_PEAK_TFLOPS)")
    r.add_argument("--gpu-memory-gb", type=float,
                   help="memory of the cluster's GPUs, a number > 0 (default: the driver's "
                        "GPU, else 80)")
    r.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failed trial from its last checkpoint, an integer >= 0 "
                        "(default 2)")
    return p
