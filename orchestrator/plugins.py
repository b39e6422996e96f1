"""Plugins: a user's own package registers tasks, LM families and controls without touching
lmblocks, the way pytest's ``pytest11`` entry points and timm's ``register_model`` work.

A plugin is a module whose import registers (``register_catalog_row`` and ``register_task``,
``register_family``, ``register_control``), found two ways:

- every entry point of the group ``lmblocks.plugins`` of an installed distribution
  (``[project.entry-points."lmblocks.plugins"] name = "module"``, or ``"module:function"``,
  called after the import);
- ``--plugin`` (repeatable) or a preset's ``plugins:``: a dotted module importable from
  ``sys.path`` or the working directory, or a path to a ``.py`` file or a package folder.

Loading one is plain data, as the built-ins' registration is: a plugin keeps torch inside
its functions, and a task's model module is imported only when the sweep names the task
(``check_plugin_tasks``) or a trial runs it. Every mistake is one ``SpecError`` line before
Ray starts: a plugin that cannot be imported, one that registers a name lmblocks or another
plugin has, a task that disagrees with its catalog row.

Ray's workers import the same plugins before a trial runs (``import_on_worker``). An
installed one must be installed on every node; one that is not installed (named by path, or
importable only from the driver's working directory) is shipped to the workers with
``ray.init(runtime_env={"py_modules": [...]})`` (``runtime_env``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points, packages_distributions
from pathlib import Path

from encoders.lm.registry import DuplicateNameError
from experiments.registrations import (
    Registrations,
    added,
    defined_in,
    record,
    registered_names,
)
from experiments.tasks.catalog import BUILTIN_TASKS, CATALOG
from orchestrator.spec import SpecError

ENTRY_POINT_GROUP = "lmblocks.plugins"
PLUGIN_FORMS = "an importable module (package.module), a .py file or a package folder"


@dataclass(frozen=True)
class LoadedPlugin:
    """One loaded plugin, and what a worker needs to import it again."""

    name: str  # the entry point's name, or --plugin's value as given
    module: str  # the module a worker imports
    attr: str = ""  # an entry point's "module:function": called after the import
    via: str = "--plugin"  # or "entry point"
    distribution: str = ""  # the installed distribution that provides it ("": none)
    ship: str = ""  # the file or folder Ray ships to the workers ("": installed)
    ref: str = ""  # how --resume names it again (a module name or an absolute path)
    registered: Registrations = field(default_factory=Registrations)

    @property
    def label(self) -> str:
        if self.via == "entry point":
            return f"plugin {self.name!r} (entry point of {self.distribution or 'unknown'})"
        return f"plugin {self.name!r} (--plugin)"


_LOADED: dict[str, LoadedPlugin] = {}  # by how it was named: idempotent loading
_BUILTIN: list[Registrations] = []  # the registries before the first plugin


def load_plugins(named: Sequence[str] = ()) -> list[LoadedPlugin]:
    """Every installed entry point of ``lmblocks.plugins``, then each of ``named`` (a dotted
    module or a path), imported once per process, each with what it registered; SpecError,
    one line naming the plugin, the cause and what is valid, on the first that fails."""
    if not _BUILTIN:
        _BUILTIN.append(registered_names())
    out: list[LoadedPlugin] = []
    seen: set[tuple[str, str]] = set()
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if (ep.name, ep.value) in seen:  # a distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        dist = ep.dist.name if ep.dist is not None else ""
        plugin = LoadedPlugin(ep.name, ep.module, ep.attr or "", "entry point", dist)
        out.append(_load(f"ep:{ep.name}={ep.value}", plugin, ep.load))
    for value in dict.fromkeys(named):
        out.append(_load_named(str(value)))
    return out


def _load_named(value: str) -> LoadedPlugin:
    if value.endswith(".py") or "/" in value or os.sep in value:  # else a dotted name
        return _load_path(value, Path(value).expanduser())
    if not all(part.isidentifier() for part in value.split(".")):
        raise SpecError(f"--plugin {value!r}: not a module name nor an existing path; "
                        f"valid: {PLUGIN_FORMS}")
    key = f"module:{value}"
    if key in _LOADED:
        return _LOADED[key]
    if os.getcwd() not in sys.path:  # importable from where the sweep is started
        sys.path.append(os.getcwd())
    plugin = LoadedPlugin(value, value, ref=value)
    return _load(key, plugin, lambda: importlib.import_module(value), locate=True)


def _load_path(value: str, path: Path) -> LoadedPlugin:
    path = path.resolve()
    init = path / "__init__.py"
    if not (path.is_file() and path.suffix == ".py") and not init.is_file():
        raise SpecError(f"--plugin {value!r}: no such .py file or package folder; "
                        f"valid: {PLUGIN_FORMS}")
    key = f"path:{path}"
    if key in _LOADED:
        return _LOADED[key]
    name = path.stem if path.is_file() else path.name
    if not name.isidentifier():
        raise SpecError(f"--plugin {value!r}: {name!r} is not a module name; valid: a file "
                        "or folder named as a Python identifier")
    plugin = LoadedPlugin(value, name, ship=str(path), ref=str(path))
    if name in sys.modules:  # the same file already imported (installed too, say), or another
        taken = getattr(sys.modules[name], "__file__", None) or ""
        if taken and Path(taken).resolve() in (path, init):
            return _load(key, plugin, lambda: sys.modules[name])
        raise SpecError(f"--plugin {value!r}: the module name {name!r} is taken (by "
                        f"{taken or 'a built-in'}); valid: a file or folder of another name")

    def load() -> object:
        spec = importlib.util.spec_from_file_location(
            name, init if path.is_dir() else path,
            submodule_search_locations=[str(path)] if path.is_dir() else None)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module

    return _load(key, plugin, load)


def _load(key: str, plugin: LoadedPlugin, load: Callable[[], object],
          locate: bool = False) -> LoadedPlugin:
    """Import (and call) ``plugin``, record what it registered; SpecError on any failure."""
    if key in _LOADED:
        return _LOADED[key]
    already = plugin.module in sys.modules
    before = registered_names()
    try:
        loaded = load()
        if plugin.attr and callable(loaded):  # an entry point "module:function"
            loaded()
    except DuplicateNameError as e:
        raise SpecError(f"{plugin.label} registers {e.kind} {e.name!r}, which "
                        f"{_owner(e.kind, e.name)} already has; valid: a name of its own"
                        ) from None
    except (ImportError, SyntaxError) as e:
        missing = getattr(e, "name", None) or ""  # a module the plugin imports, not found
        remedy = (f"install {missing.split('.')[0]!r}, which it imports" if missing and
                  missing.split(".")[0] != plugin.module.split(".")[0] else _remedy(plugin))
        raise SpecError(f"{plugin.label} cannot be imported: {_one_line(e)}; valid: "
                        f"{remedy}") from None
    except Exception as e:  # noqa: BLE001 -- whatever a user's module raises: one line
        raise SpecError(f"{plugin.label} failed while registering: {_one_line(e)}") from None
    registered = (defined_in(plugin.module) if already
                  else added(before, registered_names()))
    record(plugin.module, registered)
    changes: dict[str, object] = {"registered": registered}
    if locate:
        changes.update(zip(("distribution", "ship"), _where(plugin.module), strict=True))
    _LOADED[key] = dataclasses.replace(plugin, **changes)
    return _LOADED[key]


def _where(module: str) -> tuple[str, str]:
    """(the distribution that provides ``module``, "") when it is installed; else ("", the
    file or top-level package folder Ray must ship)."""
    top = module.split(".")[0]
    dists = packages_distributions().get(top)
    if dists:
        return dists[0], ""
    found = sys.modules.get(top)
    paths = list(getattr(found, "__path__", []) or [])
    if len(paths) == 1:
        return "", paths[0]
    return "", getattr(found, "__file__", None) or ""


def _owner(kind: str, name: str) -> str:
    builtin = _BUILTIN[0] if _BUILTIN else registered_names()
    names = {"task": BUILTIN_TASKS, "LM family": builtin.families,
             "control": builtin.controls}.get(kind, ())
    if name in names:
        return "lmblocks"
    for other in _LOADED.values():
        if name in (*other.registered.tasks, *other.registered.families,
                    *other.registered.controls):
            return other.label
    return "the registry"


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(e, SyntaxError) and e.filename:
        text = f"{e.msg} ({e.filename}, line {e.lineno})"
    return f"{type(e).__name__}: {text}"[:400]


def _remedy(plugin: LoadedPlugin) -> str:
    if plugin.via == "entry point":
        return (f"fix or uninstall its distribution (pip uninstall {plugin.distribution})"
                if plugin.distribution else "fix or uninstall its distribution")
    return PLUGIN_FORMS


def check_plugin_tasks(plugins: Sequence[LoadedPlugin], tasks: Sequence[str]) -> None:
    """The sweep's plugin tasks, imported now (their model modules, which the plan path
    otherwise leaves to the trials): each must register itself and agree with its catalog
    row (``register_task``'s check). Built-in tasks are not imported."""
    from experiments.tasks.registry import get_task

    owners = {t: p for p in plugins for t in p.registered.tasks}
    for name in tasks:
        if name not in owners:
            continue
        plugin = owners[name]
        try:
            get_task(name)
        except KeyError:
            row = CATALOG.get(name)
            where = f"module {row.module}" if row is not None else "its module"
            raise SpecError(f"{plugin.label}: task {name!r} is catalogued but {where} "
                            "registers no such task; valid: register_task(Task(name="
                            f"{name!r}, ...)) in {where}") from None
        except Exception as e:  # noqa: BLE001 -- the plugin's module: one line
            raise SpecError(f"{plugin.label}: task {name!r}: {_one_line(e)}") from None


def runtime_env(plugins: Sequence[LoadedPlugin]) -> dict[str, list[str]] | None:
    """Ray's runtime environment shipping the plugins that are not installed (a file or a
    package folder each, importable on every worker by its name); None when all are."""
    ship = sorted({p.ship for p in plugins if p.ship})
    return {"py_modules": ship} if ship else None


class PluginImportError(ImportError):
    """A Ray worker could not import a plugin the driver loaded."""


_ON_WORKER: set[str] = set()


def import_on_worker(plugins: Sequence[LoadedPlugin], node: str) -> None:
    """Import (and call) every plugin in a Ray worker before its trial runs; a plugin that
    cannot be imported there fails the trial with what to do about it."""
    for plugin in plugins:
        key = f"{plugin.module}:{plugin.attr}"
        if key in _ON_WORKER:
            continue
        try:
            module = importlib.import_module(plugin.module)
            if plugin.attr:
                getattr(module, plugin.attr)()
        except Exception as e:  # reported with the remedy
            remedy = (f"Ray shipped it from {plugin.ship}: install what it imports on every "
                      "node" if plugin.ship else "install its package on every node (pip "
                      f"install {plugin.distribution or 'its package'}) or name it by path "
                      "with --plugin so that Ray ships it")
            raise PluginImportError(f"plugin {plugin.name!r} cannot be imported on node "
                                    f"{node}: {_one_line(e)}: {remedy}") from e
        _ON_WORKER.add(key)
