"""Expand a SweepSpec into one TrialSpec per (family, size, layers, position, task, control,
seed).

Controls and the layer axis, as the controls table (``encoders/lm/controls.py``) says:
- ``pretrained`` (layers "each"): one trial per layer selection;
- ``random`` (layers "last"): one trial per family/size, a randomly initialised frozen block
  shaped like the LAST layer selection (every layer of a size has the same shape);
- ``adapters`` (layers "none"): one trial per family/size (the two linear maps at that LM's
  width, no layer);
- ``none`` (not per LM): one trial per task and seed, not tied to any LM (family and size
  are empty; it inserts nothing, so it has no position);
- every control that inserts a module runs once per position (``--positions``).
- the capacity controls: ``mlp`` (layers "none", at the LM's width), ``random-trained``,
  ``finetuned`` and ``visual-block`` (layers "last": sized like the last selection), and
  ``auxiliary`` (the last selection as a training-only side branch; classification tasks).
Validation happens here, before any weights, Ray or MLflow are touched.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import encoders.lm.families  # noqa: F401  (registers the families)
from encoders.lm.block_options import ADAPTER_INITS, FINAL_NORMS
from encoders.lm.controls import get_control, list_controls
from encoders.lm.registry import get_family, list_families
from encoders.visual.placement import END, PositionError, check_position_words, resolve_positions
from experiments.tasks.catalog import BUILTIN_TASKS
from experiments.tasks.registry import list_tasks, task_entry
from experiments.trial import (
    DTYPES,
    ENCODER_TRAIN,
    SCHEDULES,
    EncoderChoice,
    TrialSpec,
    check_num_workers,
    task_label,
)
from orchestrator.layers import LayerSpecError, resolve_layers
from orchestrator.resources import check_micro_batches
from orchestrator.spec import SpecError, SweepSpec

if TYPE_CHECKING:
    import pandas as pd

MAX_SEED = 2**31 - 1
# (hyperparameter, lower test, upper test, the valid range in words): finite numbers only
NUMBER_RANGES = (
    ("epochs", lambda v: v >= 1, lambda v: True, "an integer >= 1"),
    ("batch_size", lambda v: v >= 1, lambda v: True, "an integer >= 1"),
    ("lr", lambda v: v > 0, lambda v: True, "a finite number > 0"),
    ("weight_decay", lambda v: v >= 0, lambda v: True, "a finite number >= 0"),
    ("warmup_epochs", lambda v: v >= 0, lambda v: True, "a finite number >= 0"),
    ("label_smoothing", lambda v: v >= 0, lambda v: v < 1, "a number in [0, 1)"),
    ("mixup", lambda v: v >= 0, lambda v: True, "a finite number >= 0 (0: off)"),
    ("cutmix", lambda v: v >= 0, lambda v: True, "a finite number >= 0 (0: off)"),
    ("adapter_lr_scale", lambda v: v > 0, lambda v: True, "a finite number > 0"),
    ("norm_lr_scale", lambda v: v > 0, lambda v: True, "a finite number > 0"),
    ("size_lr_scale", lambda v: v > 0, lambda v: True, "a finite number > 0"),
    ("clip_grad", lambda v: v >= 0, lambda v: True, "a finite number >= 0 (0: off)"),
    ("drop_path", lambda v: v >= 0, lambda v: v < 1, "a number in [0, 1) (0: off)"),
    ("ema_decay", lambda v: v >= 0, lambda v: v < 1, "a number in [0, 1) (0: off)"),
    ("repeated_aug", lambda v: v >= 0, lambda v: True, "an integer >= 0 (0 or 1: off)"),
    ("lm_lr_scale", lambda v: v > 0, lambda v: True, "a finite number > 0"),
    ("aux_weight", lambda v: v > 0, lambda v: True, "a finite number > 0"),
)


def _choose(kind: str, values: tuple[str, ...], valid: list[str]) -> None:
    for v in values:
        if v not in valid:
            raise SpecError(f"unknown {kind} {v!r}; valid: {', '.join(valid)}")


def _choose_tasks(values: tuple[str, ...]) -> None:
    """As ``_choose``, the plugins' tasks named apart, and where a task of a plugin comes from."""
    for v in values:
        if v not in list_tasks():
            theirs = [n for n in list_tasks() if n not in BUILTIN_TASKS]
            raise SpecError(f"unknown task {v!r}; valid: {', '.join(sorted(BUILTIN_TASKS))}"
                            + (f"; from plugins: {', '.join(theirs)}" if theirs else "")
                            + " (a plugin's task: install its package or name it with --plugin)")


def resolve_sizes(spec: SweepSpec, family: str) -> list[str]:
    fam = get_family(family)
    out: list[str] = []
    for s in spec.sizes:
        names = list(fam.sizes) if s == "all" else [fam.default_size] if s == "default" else [s]
        for name in names:
            if name not in fam.sizes:
                raise SpecError(
                    f"unknown size {name!r} for family {family!r}; "
                    f"valid: {', '.join(fam.sizes)}, all, default"
                )
            if name not in out:
                out.append(name)
    return out


def _check_tasks_agree(spec: SweepSpec) -> None:
    """One sweep has one metric to search and schedule on, and the classification recipe
    (label smoothing, Mixup, CutMix) applies to classification tasks only."""
    tasks = [task_entry(name) for name in spec.tasks]
    targets = {(t.metric, t.mode) for t in tasks}
    if len(targets) > 1:
        shown = ", ".join(f"{t.name}: {t.metric} ({t.mode})" for t in tasks)
        raise SpecError(f"tasks {list(spec.tasks)} optimise different metrics ({shown}); valid: "
                        "tasks with one metric per sweep (run a sweep per metric)")
    hp = spec.hparams
    try:
        check_num_workers(hp.num_workers)
    except ValueError as e:
        raise SpecError(str(e)) from None
    recipe = [n for n in ("label_smoothing", "mixup", "cutmix") if getattr(hp, n)]
    other = [t.name for t in tasks if not t.classification]
    if recipe and other:
        raise SpecError(f"{', '.join(recipe)} apply to classification tasks only, not to "
                        f"{', '.join(other)}; valid: 0 for these tasks")


def _tasks_that(flag: str, names: list[str], valid: list[str], what: str) -> None:
    if names:
        raise SpecError(f"{flag} applies to tasks {what} ({', '.join(valid) or 'none here'}); "
                        f"not to {', '.join(names)}")


def encoder_choices(spec: SweepSpec) -> list[EncoderChoice]:
    """The sweep's encoder settings, checked against its tasks' catalog rows (no torch: what
    timm says of a name, a size or a file is the pre-flight's, ``orchestrator.preflight``);
    one per ``encoder_train`` value."""
    for train in spec.encoder_train:
        if train not in ENCODER_TRAIN:
            raise SpecError(f"unknown --encoder-train {train!r}; valid: {', '.join(ENCODER_TRAIN)}")
    if len(set(spec.encoder_train)) != len(spec.encoder_train) or not spec.encoder_train:
        raise SpecError(f"bad --encoder-train {list(spec.encoder_train)}; valid: full, frozen "
                        "or both, each once")
    if spec.image_size < 0 or spec.image_size > 8192:
        raise SpecError(f"bad --image-size {spec.image_size}; valid: an integer 1..8192")
    rows = {name: task_entry(name) for name in spec.tasks}
    choosing = sorted(n for n in list_tasks() if task_entry(n).chooses_encoder)
    timm = sorted(n for n in list_tasks() if task_entry(n).timm_encoder)
    if spec.encoder:
        _tasks_that("--encoder", [n for n, r in rows.items() if not r.chooses_encoder],
                    choosing, "that choose their encoder")
    else:
        needs = [n for n, r in rows.items() if r.chooses_encoder]
        if needs:
            raise SpecError(f"task {needs[0]} needs --encoder: a timm model with a blocks "
                            "sequence; valid: e.g. vit_tiny_patch16_224, deit_small_patch16_224")
    if spec.image_size:
        _tasks_that("--image-size", [n for n, r in rows.items() if not r.chooses_encoder],
                    choosing, "that choose their encoder")
    if spec.encoder_weights or "frozen" in spec.encoder_train:
        flag = "--encoder-weights" if spec.encoder_weights else "--encoder-train frozen"
        _tasks_that(flag, [n for n, r in rows.items() if not r.timm_encoder], timm,
                    "whose encoder is a timm model")
    return [EncoderChoice(spec.encoder, spec.encoder_weights, spec.encoder_checkpoint, train,
                          spec.image_size) for train in spec.encoder_train]


def task_positions(spec: SweepSpec, task: str, encoder: EncoderChoice) -> list[str]:
    """The places ``spec.positions`` names in ``task``'s encoder, one name each
    (``encoders.visual.placement``); the encoder is counted only when a place other than
    ``end`` is asked for."""
    try:
        check_position_words(spec.positions)
        if tuple(spec.positions) == (END,):
            return [END]
        from experiments.encoder_depth import encoder_depth

        return resolve_positions(spec.positions, encoder_depth(task, encoder),
                                 f"task {task!r}'s encoder")
    except (PositionError, ValueError) as e:
        raise SpecError(str(e)) from None


def _size_lr_scales(spec: SweepSpec) -> dict[tuple[str, str], float]:
    """A preset's ``lr_scale_by_size`` ({"opt/125m": 0.2}), checked: known family/size keys,
    finite scales > 0."""
    out: dict[tuple[str, str], float] = {}
    for key, scale in spec.lr_scale_by_size.items():
        family, _, size = str(key).partition("/")
        if family not in list_families() or size not in get_family(family).sizes:
            raise SpecError(f"lr_scale_by_size: unknown family/size {key!r}; valid: "
                            "family/size keys such as opt/125m")
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise SpecError(f"lr_scale_by_size: bad scale {scale!r} for {key}; "
                            "valid: a finite number > 0")
        out[(family, size)] = float(scale)
    return out


def _scaled(hp, scales: dict[tuple[str, str], float], family: str, size: str):
    """``hp`` with the size's lr scale folded into ``size_lr_scale`` (recorded on the run;
    the trial's peak lr is ``lr x size_lr_scale``, so a searched lr is scaled too)."""
    scale = scales.get((family, size))
    if scale is None:
        return hp
    return dataclasses.replace(hp, size_lr_scale=hp.size_lr_scale * scale)


def task_recipes(spec: SweepSpec) -> dict[str, object]:
    """Each task's hyperparameters: the sweep's, with the preset's ``task_hparams`` for that
    task over them, checked as the sweep's own are (a recipe for a task the sweep does not
    run, e.g. after ``--tasks``, is not used)."""
    unknown = sorted(set(spec.task_hparams) - set(list_tasks()))  # others' tasks: ignored
    if unknown:
        raise SpecError(f"task_hparams: unknown task {unknown[0]!r}; valid: "
                        f"{', '.join(sorted(list_tasks()))}")
    out = {}
    for task in spec.tasks:
        hp = dataclasses.replace(spec.hparams, **spec.task_hparams.get(task, {}))
        for name, low, high, valid in NUMBER_RANGES:
            value = getattr(hp, name)
            if not (math.isfinite(value) and low(value) and high(value)):
                raise SpecError(f"task_hparams[{task}]: bad {name} {value!r}; valid: {valid}")
        out[task] = hp
    return out


def _own(hp, control: str):
    """``hp`` with the hyperparameters of other controls at their neutral value: a cell's
    key changes only with what it trains by (``--aux-weight`` is the auxiliary control's)."""
    if control != "auxiliary" and hp.aux_weight != 1.0:
        return dataclasses.replace(hp, aux_weight=1.0)
    return hp


def build_plan(spec: SweepSpec) -> list[TrialSpec]:
    """Validate ``spec`` and expand it; raises SpecError with a one-line message."""
    if not spec.families or not spec.tasks or not spec.controls or not spec.seeds:
        raise SpecError(
            "empty sweep: families, tasks, controls and seeds each need at least one value"
        )
    _choose("family", spec.families, list_families())
    _choose_tasks(spec.tasks)
    _choose("control", spec.controls, list_controls())
    if spec.hparams.compute_dtype not in DTYPES:
        raise SpecError(
            f"unknown compute dtype {spec.hparams.compute_dtype!r}; valid: {', '.join(DTYPES)}"
        )
    if spec.hparams.adapter_init not in ADAPTER_INITS:
        raise SpecError(f"unknown adapter init {spec.hparams.adapter_init!r}; "
                        f"valid: {', '.join(ADAPTER_INITS)}")
    hp = spec.hparams
    if hp.schedule not in SCHEDULES:
        raise SpecError(f"unknown schedule {hp.schedule!r}; valid: {', '.join(SCHEDULES)}")
    for name, low, high, valid in NUMBER_RANGES:
        value = getattr(hp, name)
        if not (math.isfinite(value) and low(value) and high(value)):
            raise SpecError(f"bad {name} {value!r}; valid: {valid}")
    _check_tasks_agree(spec)
    if len(set(spec.seeds)) != len(spec.seeds):
        raise SpecError(f"duplicate seeds {list(spec.seeds)}")
    for seed in spec.seeds:
        if not 0 <= seed <= MAX_SEED:
            raise SpecError(f"bad seed {seed}; valid: 0..{MAX_SEED}")
    controls = [get_control(c) for c in spec.controls]
    if any(c.layers != "none" for c in controls) and not spec.layers:
        raise SpecError("empty sweep: no layers; valid: last, all, 5, -1, 2..5, 3:5")

    if spec.hparams.final_norm not in FINAL_NORMS:
        raise SpecError(f"unknown final norm {spec.hparams.final_norm!r}; "
                        f"valid: {', '.join(FINAL_NORMS)}")
    if spec.hparams.final_norm == "lm":
        for family in spec.families:
            fam = get_family(family)
            post_ln = [s for s in resolve_sizes(spec, family)
                       if fam.size(s).extra.get("do_layer_norm_before") is False]
            if fam.final_norm_key is None or post_ln:
                raise SpecError(
                    f"--final-norm lm: {family} {'/'.join(post_ln) or ''} has no final norm "
                    f"(post-LN); valid: families {', '.join(f for f in list_families() if get_family(f).final_norm_key)} "
                    "(not opt/350m)"
                )

    if "auxiliary" in spec.controls:  # its branch has a classifier: a task needs classes
        other = [n for n in spec.tasks if not task_entry(n).classification]
        if other:
            raise SpecError(f"control 'auxiliary' applies to classification tasks only, not "
                            f"to {', '.join(other)}; valid: its other controls here")
    scales = _size_lr_scales(spec)
    encoders = encoder_choices(spec)
    recipes = task_recipes(spec)
    trials: list[TrialSpec] = []
    for task in spec.tasks:
        hp = recipes[task]
        for seed in spec.seeds:
            for control in controls:
                if not control.per_lm:
                    trials.extend(TrialSpec("", "", (), task, control.name, seed,
                                            _own(hp, control.name), enc) for enc in encoders)
    for family in spec.families:
        fam = get_family(family)
        for size in resolve_sizes(spec, family):
            n = fam.size(size).num_layers
            try:
                selections = resolve_layers(list(spec.layers), n, f"{family}/{size}")
            except LayerSpecError as e:
                raise SpecError(str(e)) from None
            for task in spec.tasks:
                for control in (c for c in controls if c.per_lm):
                    sels = {"each": selections, "last": selections[-1:], "none": [()]}[
                        control.layers]
                    for sel in sels:
                        for seed in spec.seeds:
                            trials.extend(
                                TrialSpec(family, size, sel, task, control.name, seed,
                                          _own(_scaled(recipes[task], scales, family, size),
                                               control.name),
                                          enc, position)
                                for enc in encoders
                                for position in task_positions(spec, task, enc))
    if not trials:
        raise SpecError("empty sweep: the spec expands to no trial")
    check_micro_batches(trials)
    return trials


def plan_table(trials: list[TrialSpec]) -> pd.DataFrame:
    """One row per trial with the block's frozen parameters and the bytes of weights to read."""
    import pandas as pd

    rows = []
    for t in trials:
        params = read = 0
        if t.layers:
            fam = get_family(t.family)
            params = fam.layer_params(t.size) * len(t.layers)
            if t.weights_source == "pretrained":  # read from the checkpoint
                read = round(params * fam.size(t.size).disk_bytes_per_param)
        rows.append(
            {
                "family": t.family or "-",
                "size": t.size or "-",
                "layers": t.layer_label or "-",
                "position": t.position if t.family else "-",
                "task": task_label(t.task, t.encoder),
                "control": t.control,
                "seed": t.seed,
                "block_params": params,
                "read_bytes": read,
            }
        )
    return pd.DataFrame(rows)


def size_table(trials: list[TrialSpec]) -> pd.DataFrame:
    """Per planned family/size: one layer's bytes against the whole checkpoint's."""
    import pandas as pd

    rows = []
    for family, size in dict.fromkeys((t.family, t.size) for t in trials if t.family):
        fam = get_family(family)
        itemsize = fam.size(size).disk_bytes_per_param
        layer, whole = fam.layer_params(size), fam.model_params(size)
        rows.append({
            "family": family, "size": size, "layers": fam.size(size).num_layers,
            "layer_bytes": round(layer * itemsize), "checkpoint_bytes": round(whole * itemsize),
            "layer_share": layer / whole,
        })
    return pd.DataFrame(rows)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"
