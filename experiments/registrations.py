"""What a module registers: the tasks (catalog rows and registered tasks), LM families and
controls its import adds, found by comparing the registries' names before and after it.

Names only, no torch: the plugin loader (``orchestrator/plugins.py``) records every plugin's
registrations this way on every sweep, and a plugin author's tests parametrize over them
(``experiments.registry_checks``).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import encoders.lm.families  # noqa: F401  (the built-in families, before any plugin)
from encoders.lm.controls import get_control, list_controls
from encoders.lm.registry import get_family, list_families
from experiments.tasks.catalog import CATALOG
from experiments.tasks.registry import get_task, list_tasks


@dataclass(frozen=True)
class Registrations:
    tasks: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.tasks or self.families or self.controls)

    def describe(self) -> str:
        """``tasks a, b; controls c`` (``nothing`` when empty)."""
        parts = [f"{kind} {', '.join(names)}" for kind, names in (
            ("tasks", self.tasks), ("LM families", self.families), ("controls", self.controls))
            if names]
        return "; ".join(parts) or "nothing"


def registered_names() -> Registrations:
    """Every name the registries hold now."""
    return Registrations(tuple(list_tasks()), tuple(list_families()), tuple(list_controls()))


def added(before: Registrations, after: Registrations) -> Registrations:
    """The names in ``after`` that ``before`` lacks, in ``after``'s order."""
    return Registrations(*(tuple(n for n in new if n not in set(old)) for old, new in (
        (before.tasks, after.tasks), (before.families, after.families),
        (before.controls, after.controls))))


def _defined_in(obj: object, module: str) -> bool:
    where = obj if isinstance(obj, str) else getattr(obj, "__module__", None) or ""
    return where == module or where.startswith(module + ".")


def defined_in(module: str) -> Registrations:
    """What the registries hold from ``module`` (or its submodules), for a module imported
    before anyone recorded its import: catalog rows naming it, tasks whose model builder it
    defines, families whose config builder it defines, controls whose builder it holds."""
    tasks = [name for name in list_tasks() if (
        _defined_in(CATALOG[name].module, module) if name in CATALOG
        else _defined_in(get_task(name).build_model, module))]
    families = [n for n in list_families() if _defined_in(get_family(n).make_config, module)]
    controls = [n for n in list_controls()
                if _defined_in(str(get_control(n).build).partition(":")[0]
                               if isinstance(get_control(n).build, str)
                               else get_control(n).build, module)]
    return Registrations(tuple(tasks), tuple(families), tuple(controls))


_RECORDED: dict[str, Registrations] = {}


def record(module: str, registrations: Registrations) -> None:
    """Remember what importing ``module`` registered (the plugin loader records each plugin)."""
    _RECORDED[module] = registrations


def plugin_registrations(module: str) -> Registrations:
    """What importing ``module`` registers: recorded at its first import through here or the
    plugin loader; imported now when it was not imported yet; else what the registries hold
    from it (``defined_in``)."""
    if module in _RECORDED:
        return _RECORDED[module]
    if module in sys.modules:
        return defined_in(module)
    before = registered_names()
    importlib.import_module(module)
    record(module, added(before, registered_names()))
    return _RECORDED[module]

