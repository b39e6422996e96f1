"""Plugin packages (``orchestrator/plugins.py``): a user's package registers tasks, families
and controls through the ``lmblocks.plugins`` entry points or ``--plugin``; every mistake is
one line, exit 2, before Ray; the registry checks run on what plugins register; the example
plugin (``examples/plugin_task``, installed as ``.ci/run`` does) sweeps like a built-in task,
locally and on a two-node ``ray start`` cluster, where a plugin named by path reaches the
workers through Ray's ``py_modules``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from encoders.lm.controls import list_controls
from experiments.registry_checks import (
    check_family_matches_its_own_model,
    check_task_with_control,
    plugin_registrations,
)
from orchestrator import cli
from orchestrator.plugins import (
    ENTRY_POINT_GROUP,
    LoadedPlugin,
    PluginImportError,
    import_on_worker,
    load_plugins,
    runtime_env,
)
from orchestrator.tuner import SWEEP_FILE
from tests.conftest import forget_plugins
from tests.services import CLUSTER_ENV, RayNode, free_port, processes_mentioning

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_task"
INSTALL = "pip install --no-build-isolation --no-deps -e examples/plugin_task (as .ci/run does)"
ERROR = "lmblocks-sweep: error: "
HINT = "(a plugin's task: install its package or name it with --plugin)"


def example_entry_point() -> str | None:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}.get("shapes")


@pytest.fixture
def example():
    """The example plugin, installed (its entry point ``shapes``)."""
    assert example_entry_point() == "plugin_task", f"the example plugin is not installed: {INSTALL}"


def copy_of_the_example(folder: Path, name: str = "shapes_copy") -> Path:
    """The example's module under another module and task name: a plugin that is not
    installed (its task ``plugin-shapes-copy``)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = (EXAMPLE / "plugin_task.py").read_text()
    assert 'NAME = "plugin-shapes"\n' in source
    path = folder / f"{name}.py"
    path.write_text(source.replace('NAME = "plugin-shapes"\n', 'NAME = "plugin-shapes-copy"\n'))
    return path


def sweep(cwd: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess,
                                                                     set[str]]:
    """``sweep.py ARGS`` in ``cwd`` with its own store and storage there; (the process with
    the import-time lines taken out of its stderr, the top-level packages it imported)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "sweep.py"), *args,
         "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}", "--storage", str(cwd / "runs")],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})})
    lines = proc.stderr.splitlines()
    mods = {ln.split("|")[2].strip().split(".")[0] for ln in lines
            if ln.startswith("import time:") and ln.count("|") == 2}
    proc.stderr = "\n".join(ln for ln in lines if not ln.startswith("import time:"))
    return proc, mods


# --- every new bad input: one line, exit 2, before Ray ------------------------------------

REGISTRY = ("from encoders.lm.registry import get_family, register_family\n"
            "from encoders.lm.controls import get_control, register_control\n"
            "from experiments.tasks.catalog import TaskEntry, register_catalog_row\n"
            "from experiments.tasks.registry import Task, register_task\n"
            "import dataclasses\n")
TASK = 'Task("{name}", "d", 8, build_data=lambda d=None: None, build_model=lambda b: None)'
BAD = {  # plugin file -> (its source, extra args, what the line says)
    "broken": ("import numpyy\n", [], ("plugin 'broken.py' (--plugin) cannot be imported: "
               "ModuleNotFoundError: No module named 'numpyy'; valid: install 'numpyy'")),
    "syntax": ("def f(:\n", [], ("plugin 'syntax.py' (--plugin) cannot be imported: "
               "SyntaxError: invalid syntax (")),
    "row_clash": (REGISTRY + 'register_catalog_row(TaskEntry("digits", __name__))\n', [],
                  ("plugin 'row_clash.py' (--plugin) registers task 'digits', which lmblocks "
                  "already has; valid: a name of its own")),
    "task_clash": (REGISTRY + f"register_task({TASK.format(name='digits')})\n", [],
                   "registers task 'digits', which lmblocks already has"),
    "family_clash": (REGISTRY + 'register_family(get_family("opt"))\n', [],
                     "registers LM family 'opt', which lmblocks already has"),
    "control_clash": (REGISTRY + 'register_control(dataclasses.replace(get_control("none"),'
                      ' label="mine"))\n', [], ("registers control 'none', which lmblocks "
                      "already has")),
    "disagrees": (REGISTRY + 'register_catalog_row(TaskEntry("mine", __name__, "val_loss", '
                  f'"min"))\nregister_task({TASK.format(name="mine")})\n', [],
                  ("plugin 'disagrees.py' (--plugin) failed while registering: ValueError: "
                  "task 'mine' disagrees with its catalog row")),
    "no_task": (REGISTRY + 'register_catalog_row(TaskEntry("lazy", __name__))\n',
                ["--tasks", "lazy"], ("plugin 'no_task.py' (--plugin): task 'lazy' is "
                "catalogued but module no_task registers no such task")),
    "second": (REGISTRY + 'register_catalog_row(TaskEntry("twin", __name__))\n',
               ["--plugin", "first.py"], ("plugin 'first.py' (--plugin) registers task 'twin', "
               "which plugin 'second.py' (--plugin) already has")),
}


@pytest.mark.parametrize("plugin", list(BAD))
def test_a_bad_plugin_is_one_line_exit_2_before_ray(tmp_path, plugin):
    source, extra, says = BAD[plugin]
    (tmp_path / f"{plugin}.py").write_text(source)
    (tmp_path / "first.py").write_text(BAD["second"][0])
    proc, mods = sweep(tmp_path, "--plugin", f"{plugin}.py", *extra)  # a real run, not --dry-run
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(ERROR) and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert says in proc.stderr
    assert not mods & {"ray", "torch", "mlflow"}, sorted(mods & {"ray", "torch", "mlflow"})
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["--tasks", "nope"], "unknown task 'nope'; valid: argoverse, cifar10, "),
    (["--plugin", "missing.py"], ("--plugin 'missing.py': no such .py file or package folder; "
     "valid: an importable module (package.module), a .py file or a package folder")),
    (["--plugin", "not-a.module"], ("--plugin 'not-a.module': not a module name nor an "
     "existing path")),
    (["--plugin", "nowhere_to_be_found"], ("plugin 'nowhere_to_be_found' (--plugin) cannot be "
     "imported: ModuleNotFoundError: No module named 'nowhere_to_be_found'; valid: an "
     "importable module")),
])
def test_an_unknown_task_or_plugin_is_one_line_exit_2(tmp_path, args, says):
    proc, mods = sweep(tmp_path, *args)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(ERROR + says), proc.stderr
    if args[0] == "--tasks":
        assert proc.stderr.endswith(HINT)
    assert "ray" not in mods


def test_an_installed_plugin_that_fails_names_its_distribution(tmp_path):
    """An entry point of a distribution found on the path (a dist-info folder, as pip
    writes it) whose module is gone."""
    site = tmp_path / "site"
    info = site / "brokenplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbad = gone_module\n")
    proc, _ = sweep(tmp_path, env={"PYTHONPATH": str(site)})
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr == (f"{ERROR}plugin 'bad' (entry point of brokenplug) cannot be imported: "
                           "ModuleNotFoundError: No module named 'gone_module'; valid: fix or "
                           "uninstall its distribution (pip uninstall brokenplug)")


def test_an_installed_entry_point_may_name_a_function_to_call(tmp_path):
    """``name = "module:function"``: the module is imported, then the function registers."""
    site = tmp_path / "site"
    info = site / "fnplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fnplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nfn = fnplug:register\n")
    task = TASK.format(name="fn-task")
    (site / "fnplug.py").write_text(REGISTRY + f"def register():\n    register_task({task})\n")
    proc, _ = sweep(tmp_path, "--dry-run", "--tasks", "fn-task", "--controls", "none",
                    env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fn-task" in proc.stdout


def test_resume_loads_the_plugins_the_sweep_was_started_with_before_ray(tmp_path, capsys):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / SWEEP_FILE).write_text(json.dumps(
        {"plugins": [str(tmp_path / "gone.py")]}))
    assert cli.main(["--resume", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"{ERROR}--plugin '{tmp_path / 'gone.py'}': no such .py file or package "
                   "folder; valid: an importable module (package.module), a .py file or a "
                   "package folder")


# --- plugins that work: plan path, shipping, workers ------------------------------------------


@pytest.mark.parametrize("how", ["path", "module", "preset"])
def test_a_plugin_by_path_module_name_or_preset_dry_runs_without_torch(tmp_path, how):
    plugin = copy_of_the_example(tmp_path / "mine")
    args = {"path": ["--plugin", str(plugin)], "module": ["--plugin", "shapes_copy"],
            "preset": ["--preset", str(tmp_path / "p.yaml")]}[how]
    if how == "module":  # importable from where the sweep starts
        plugin.rename(tmp_path / plugin.name)
    (tmp_path / "p.yaml").write_text(f"plugins: [{plugin}]\ntasks: [plugin-shapes-copy]\n")
    proc, mods = sweep(tmp_path, *args, "--dry-run", "--tasks", "plugin-shapes-copy",
                       "--controls", "none", "pretrained")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "plugin-shapes-copy" in proc.stdout and "cost estimate" in proc.stdout
    assert not mods & {"torch", "timm", "ray"}, sorted(mods & {"torch", "timm", "ray"})


def test_installed_and_named_plugins_load_once_and_ship_what_is_not_installed(
        tmp_path, monkeypatch, example):
    path = copy_of_the_example(tmp_path / "by_path")
    copy_of_the_example(tmp_path, "from_cwd")
    (tmp_path / "from_cwd.py").write_text((tmp_path / "from_cwd.py").read_text().replace(
        '"plugin-shapes-copy"', '"plugin-shapes-cwd"'))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the loader adds the working dir; undone here
    plugins = {p.name: p for p in load_plugins([str(path), "from_cwd"])}
    shapes, by_path, cwd = plugins["shapes"], plugins[str(path)], plugins["from_cwd"]
    assert (shapes.via, shapes.distribution, shapes.ship) == (
        "entry point", "lmblocks-plugin-task", "")
    assert shapes.registered.tasks == ("plugin-shapes",)
    assert (by_path.module, by_path.ship, by_path.ref) == ("shapes_copy", str(path), str(path))
    assert by_path.registered.tasks == ("plugin-shapes-copy",)
    assert (cwd.module, cwd.distribution, cwd.ship) == (
        "from_cwd", "", str(tmp_path / "from_cwd.py"))
    assert runtime_env(list(plugins.values())) == {
        "py_modules": sorted([str(path), str(tmp_path / "from_cwd.py")])}
    assert load_plugins([str(path), "from_cwd"]) == list(plugins.values())  # once per process
    assert plugin_registrations("shapes_copy").tasks == ("plugin-shapes-copy",)


def test_a_worker_that_cannot_import_a_plugin_says_what_to_do():
    installed = LoadedPlugin("shapes", "no_such_plugin_module", via="entry point",
                             distribution="lmblocks-plugin-task")
    with pytest.raises(PluginImportError) as e:
        import_on_worker([installed], "10.0.0.7 (abc123)")
    assert str(e.value) == (
        "plugin 'shapes' cannot be imported on node 10.0.0.7 (abc123): ModuleNotFoundError: "
        "No module named 'no_such_plugin_module': install its package on every node (pip "
        "install lmblocks-plugin-task) or name it by path with --plugin so that Ray ships it")
    shipped = LoadedPlugin("x.py", "no_such_plugin_module", ship="/home/me/x.py")
    with pytest.raises(PluginImportError, match="Ray shipped it from /home/me/x.py: install "
                                                "what it imports on every node"):
        import_on_worker([shipped], "10.0.0.7 (abc123)")


# --- the registry checks, on what plugins register ----------------------------------------------


def _installed_tasks() -> list[str]:
    try:
        return [t for p in load_plugins() for t in p.registered.tasks]
    finally:
        forget_plugins()


@pytest.mark.parametrize("control", list_controls())
@pytest.mark.parametrize("task", _installed_tasks())
def test_every_installed_plugin_task_with_every_control(task, control):
    load_plugins()
    check_task_with_control(task, control)


def test_the_checks_run_on_a_plugin_s_family_and_control(tmp_path):
    plugin = tmp_path / "more.py"
    plugin.write_text(REGISTRY + 'register_family(dataclasses.replace(get_family("gpt2"), '
                      'name="plugin-gpt2"))\nregister_control(dataclasses.replace('
                      'get_control("random"), name="plugin-random"))\n')
    (loaded,) = [p for p in load_plugins([str(plugin)]) if p.module == "more"]
    assert (loaded.registered.families, loaded.registered.controls) == (
        ("plugin-gpt2",), ("plugin-random",))
    check_family_matches_its_own_model("plugin-gpt2", tmp_path / "ckpt")
    check_task_with_control("digits", "plugin-random")


@pytest.mark.slow
def test_the_example_s_own_tests_pass(example):
    proc = subprocess.run([sys.executable, "-m", "pytest", str(EXAMPLE), "-p", "no:cacheprovider",
                           "-n", "0", "-q"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


# --- sweeps: locally, and on a two-node ray start cluster --------------------------------------

FOUR_TRIALS = ["--controls", "none", "pretrained", "--layers", "last", "--epochs", "2",
               "--batch-size", "16", "--quiet"]


def finished_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              "tags.`lmblocks.kind` = 'trial'")
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    return runs


@pytest.mark.slow
def test_the_example_sweeps_like_a_built_in_task(tmp_path, example):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--tasks", "plugin-shapes", "--seeds", "0",
         "1", *FOUR_TRIALS, "--tracking-uri", uri, "--storage", str(tmp_path / "runs"),
         "--experiment", "plugin", "--report-dir", str(tmp_path / "report")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = finished_runs(uri, "plugin")
    assert len(runs) == 4 and {r.data.params["task"] for r in runs} == {"plugin-shapes"}
    assert all(r.data.metrics["val_acc"] > 0.4 for r in runs)  # chance: 1/3
    table = (tmp_path / "report" / "runs.csv").read_text()
    assert table.count("plugin-shapes") == 4 and all(r.info.run_id in table for r in runs)
    assert "| plugin-shapes" in proc.stdout and "4 trials finished, 0 failed" in proc.stdout


@pytest.mark.slow
def test_an_installed_and_a_shipped_plugin_sweep_on_a_ray_start_cluster(tmp_path, example):
    """Two nodes (``ray start``, each its own processes); the example installed, and a copy
    named by path in a folder no worker has on its path: Ray ships it (py_modules)."""
    plugin = copy_of_the_example(tmp_path / "elsewhere")
    port = free_port()
    head = RayNode(Path(tempfile.mkdtemp(prefix="lmb-head-")), port, head=True)
    worker = RayNode(Path(tempfile.mkdtemp(prefix="lmb-node-")), port, head=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "driver").mkdir()
    try:
        head.start()
        worker.start()
        proc = subprocess.run(
            [sys.executable, str(ROOT / "sweep.py"), "--plugin", str(plugin), "--tasks",
             "plugin-shapes", "plugin-shapes-copy", "--seeds", "0", *FOUR_TRIALS,
             "--address", head.address, "--tracking-uri", uri, "--storage",
             str(tmp_path / "runs"), "--experiment", "cluster-plugin", "--report-dir",
             str(tmp_path / "report")],
            cwd=tmp_path / "driver", capture_output=True, text=True, timeout=600, check=False,
            env={**os.environ, **CLUSTER_ENV})
    finally:
        worker.stop()
        head.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert processes_mentioning(str(head.temp_dir)) == []
    runs = finished_runs(uri, "cluster-plugin")
    assert sorted(r.data.params["task"] for r in runs) == [
        "plugin-shapes", "plugin-shapes", "plugin-shapes-copy", "plugin-shapes-copy"]
    assert len({r.data.tags["ray.node_id"] for r in runs}) == 2  # both nodes ran trials
    (meta,) = (tmp_path / "runs").glob(f"*/{SWEEP_FILE}")
    assert json.loads(meta.read_text())["plugins"] == [str(plugin)]  # what --resume loads
    table = (tmp_path / "report" / "runs.csv").read_text()
    assert table.count("plugin-shapes-copy") == 2
