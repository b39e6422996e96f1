"""The sweep specification: a dataclass, loaded from a YAML preset, overridden from the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from experiments.trial import HPARAMS, Hyperparameters, final_norm_choice


class SpecError(ValueError):
    """Bad sweep input; the message names the bad value and the valid choices."""


@dataclass(frozen=True)
class SweepSpec:
    """Every axis a sweep crosses; ``sizes`` may hold ``all`` or ``default`` per family."""

    name: str = "default"
    families: tuple[str, ...] = ("minilm",)
    sizes: tuple[str, ...] = ("default",)
    layers: tuple[str, ...] = ("last",)
    # where the inserted module runs in the encoder (encoders.visual.placement): end, middle,
    # start, an index, -k, all; one trial per place
    positions: tuple[str, ...] = ("end",)
    tasks: tuple[str, ...] = ("digits",)
    controls: tuple[str, ...] = ("pretrained",)
    seeds: tuple[int, ...] = (0,)
    hparams: Hyperparameters = field(default_factory=Hyperparameters)
    # "family/size" -> lr multiplier for that size's trials (the paper's Table C: OPT-125M
    # and -350M at lr/5); recorded on each run as ``size_lr_scale`` and ``effective_lr``
    lr_scale_by_size: dict[str, float] = field(default_factory=dict)
    # task -> hyperparameters of that task's trials (a recipe per task in one sweep, e.g.
    # {moving-digits: {lr: 0.0003, warmup_epochs: 2}}); recorded on each run as its params
    task_hparams: dict[str, dict[str, object]] = field(default_factory=dict)
    # The visual encoder's own settings (experiments.trial.EncoderChoice): a timm model name
    # for the tasks that take one (``images``), its weights file and that file's sha256 (the
    # pre-flight fills it in), whether its weights train (one trial each), its input size.
    encoder: str = ""
    encoder_weights: str = ""
    encoder_checkpoint: str = ""
    encoder_train: tuple[str, ...] = ("full",)
    image_size: int = 0
    # Plugins the sweep needs besides the installed ones (orchestrator/plugins.py): dotted
    # modules or paths to a .py file or package folder, as --plugin takes them
    plugins: tuple[str, ...] = ()

    def replace(self, **changes: object) -> SweepSpec:
        hp = {k: changes.pop(k) for k in list(changes) if k in _HPARAM_FIELDS}
        spec = dataclasses.replace(self, **changes)
        if hp:
            spec = dataclasses.replace(spec, hparams=dataclasses.replace(spec.hparams, **hp))
        return spec


_SPEC_FIELDS = {f.name for f in dataclasses.fields(SweepSpec)} - {"hparams"}
_HPARAM_FIELDS = set(HPARAMS)
_TUPLE_FIELDS = {"families", "sizes", "layers", "positions", "tasks", "controls", "seeds", "encoder_train",
                 "plugins"}
_SPEC_TYPES = {"encoder": "str", "encoder_weights": "str", "encoder_checkpoint": "str",
               "image_size": "int"}


def presets_dir() -> Path:
    return Path(str(resources.files("experiments") / "presets"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def load_spec(preset: str | Path) -> SweepSpec:
    """A preset name (``experiments/presets/NAME.yaml``) or a path to a YAML file."""
    path = Path(preset)
    if not path.suffix:
        path = presets_dir() / f"{preset}.yaml"
        if not path.is_file():
            raise SpecError(f"unknown preset {preset!r}; valid: {', '.join(list_presets())}")
    elif not path.is_file():
        raise SpecError(f"preset file {str(preset)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SpecError(f"preset {path}: not valid YAML{at}: "
                        f"{getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"preset {path}: cannot read it ({e})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"preset {path}: expected a mapping of sweep fields")
    return spec_from_dict(raw, where=str(path))


def spec_from_dict(raw: dict, where: str = "spec") -> SweepSpec:
    unknown = set(raw) - _SPEC_FIELDS - _HPARAM_FIELDS
    if unknown:
        valid = ", ".join(sorted(_SPEC_FIELDS | _HPARAM_FIELDS))
        raise SpecError(f"{where}: unknown field(s) {sorted(unknown)}; valid: {valid}")
    changes: dict[str, object] = {}
    for key, value in raw.items():
        if key in _TUPLE_FIELDS:
            value = tuple(value) if isinstance(value, list | tuple) else (value,)
            if key == "seeds":
                value = tuple(_typed(where, "seeds", v, "int") for v in value)
            else:
                value = tuple(str(v) for v in value)
        elif key == "epochs":
            changes.update(parse_epochs(value, where))
            continue
        elif key == "final_norm" and isinstance(value, bool):
            value = final_norm_choice(value)  # a legacy preset: true -> lm, false -> none
        elif key in _HPARAM_TYPES:
            value = _typed(where, key, value, _HPARAM_TYPES[key])
        elif key == "lr_scale_by_size":
            if not isinstance(value, dict):
                raise SpecError(f"{where}: bad lr_scale_by_size {value!r}; valid: a mapping "
                                "of family/size to a number, e.g. {opt/125m: 0.2}")
            value = {str(k): _typed(where, f"lr_scale_by_size[{k}]", v, "float")
                     for k, v in value.items()}
        elif key == "task_hparams":
            value = _task_hparams(value, where)
        elif key in _SPEC_TYPES:
            value = _typed(where, key, value, _SPEC_TYPES[key])
        elif key == "name" and not isinstance(value, str):
            raise SpecError(f"{where}: bad name {value!r}; valid: a string")
        changes[key] = value
    return SweepSpec().replace(**changes)


def _task_hparams(value: object, where: str) -> dict[str, dict[str, object]]:
    """A preset's ``task_hparams``, typed like the sweep's own fields (the plan checks the
    tasks and the ranges)."""
    fix = "valid: a mapping of task to hyperparameters, e.g. {moving-digits: {lr: 0.0003}}"
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise SpecError(f"{where}: bad task_hparams {value!r}; {fix}")
    out: dict[str, dict[str, object]] = {}
    for task, hps in value.items():
        unknown = set(hps) - _HPARAM_FIELDS
        if unknown:
            raise SpecError(f"{where}: task_hparams[{task}]: unknown field(s) "
                            f"{sorted(unknown)}; valid: {', '.join(sorted(_HPARAM_FIELDS))}")
        typed: dict[str, object] = {}
        for k, v in hps.items():
            if k == "epochs":
                typed.update(parse_epochs(v, f"{where}: task_hparams[{task}]"))
            else:
                typed[k] = _typed(where, f"task_hparams[{task}].{k}", v, _HPARAM_TYPES[k])
        out[str(task)] = typed
    return out


AUTO_EPOCHS = "auto:"


def parse_epochs(value: object, where: str = "") -> dict[str, object]:
    """``12`` -> 12 epochs; ``auto:12`` -> stop at the claims' plateau, at most 12 (the
    hyperparameters ``epochs`` and ``auto_epochs``). The range (>= 1) is the plan's check."""
    text = str(value).strip()
    number = text.removeprefix(AUTO_EPOCHS)
    if isinstance(value, bool | float) or not number.isdigit():
        raise SpecError(f"{where + ': ' if where else ''}bad epochs {value!r}; valid: an "
                        "integer >= 1, or auto:MAX (stop when converged, at most MAX)")
    return {"epochs": int(number), "auto_epochs": text.startswith(AUTO_EPOCHS)}


# Hyperparameters' field types, from the dataclass (annotations are strings here).
_HPARAM_TYPES = {f.name: str(f.type) for f in dataclasses.fields(Hyperparameters)}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false",
               "str": "a string"}


def _typed(where: str, key: str, value: object, kind: str) -> object:
    """``value`` as the field's type, or SpecError naming the file, key and value (YAML gives
    ``epochs: ten`` as a string and ``lr: 1e-3`` as a string too: PyYAML reads YAML 1.1)."""
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
        elif kind == "int":
            if not isinstance(value, bool) and float(str(value)) == int(float(str(value))):
                return int(float(str(value)))
        elif kind == "float":
            if not isinstance(value, bool):
                return float(str(value))
        elif kind == "str" and isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise SpecError(f"{where}: bad {key} {value!r}; valid: {_TYPE_WORDS.get(kind, kind)}")
