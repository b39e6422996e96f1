"""The sweep specification: a dataclass, loaded from a YAML preset, overridden from the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from experiments.trial import HPARAMS, Hyperparameters


class SpecError(ValueError):
    """Bad sweep input; the message names the bad value and the valid choices."""


@dataclass(frozen=True)
class SweepSpec:
    """Every axis a sweep crosses; ``sizes`` may hold ``all`` or ``default`` per family."""

    name: str = "default"
    families: tuple[str, ...] = ("minilm",)
    sizes: tuple[str, ...] = ("default",)
    layers: tuple[str, ...] = ("last",)
    tasks: tuple[str, ...] = ("digits",)
    controls: tuple[str, ...] = ("pretrained",)
    seeds: tuple[int, ...] = (0,)
    hparams: Hyperparameters = field(default_factory=Hyperparameters)

    def replace(self, **changes: object) -> SweepSpec:
        hp = {k: changes.pop(k) for k in list(changes) if k in _HPARAM_FIELDS}
        spec = dataclasses.replace(self, **changes)
        if hp:
            spec = dataclasses.replace(spec, hparams=dataclasses.replace(spec.hparams, **hp))
        return spec


_SPEC_FIELDS = {f.name for f in dataclasses.fields(SweepSpec)} - {"hparams"}
_HPARAM_FIELDS = set(HPARAMS)
_TUPLE_FIELDS = {"families", "sizes", "layers", "tasks", "controls", "seeds"}


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
    raw = yaml.safe_load(path.read_text()) or {}
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
                value = tuple(int(v) for v in value)
            else:
                value = tuple(str(v) for v in value)
        changes[key] = value
    return SweepSpec().replace(**changes)
