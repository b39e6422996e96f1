"""The plan path imports neither torch nor transformers (issue 16): a bad flag, a dry run and
the report's help answer without them, so in well under a second of imports. Checked on the
import graph itself (``python -X importtime``), not on wall-clock time; ``bench/cli_latency.py``
measures the times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "timm", "ray", "mlflow", "optuna", "matplotlib", "sklearn")


def imported(args: list[str], cwd: Path, expect: int) -> set[str]:
    """Top-level packages a command imported (``-X importtime`` lists every import)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == expect, proc.stderr[-2000:]
    return {line.split("|")[2].strip().split(".")[0] for line in proc.stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2} - {"package"}


@pytest.mark.parametrize(("args", "expect"), [
    (["--family", "gpt9"], 2),
    (["--tasks", "digits,nope"], 2),
    (["--epochs", "0"], 2),
    (["--tasks", "images"], 2),  # needs --encoder: said before timm is imported
    (["--encoder-train", "frozen", "--tasks", "shapes3d"], 2),
    (["--dry-run", "--family", "opt", "--sizes", "all"], 0),
    (["--dry-run", "--preset", "paper_claims"], 0),
    (["--help"], 0),
])
def test_the_plan_path_imports_no_heavy_library(tmp_path, args, expect):
    mods = imported([str(ROOT / "sweep.py"), *args], tmp_path, expect)
    assert "orchestrator" in mods  # the listing works
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))
    if expect == 2:  # a bad input: not even pandas
        assert "pandas" not in mods


def test_the_report_help_and_a_missing_store_import_no_heavy_library(tmp_path):
    for args, expect in ((["--help"], 0), (["lmblocks-default"], 2)):
        mods = imported(["-m", "results.report", *args], tmp_path, expect)
        assert "results" in mods and not mods & {*HEAVY, "pandas"}, sorted(mods & set(HEAVY))
    assert not (tmp_path / "mlflow.db").exists()




@pytest.mark.parametrize(("args", "expect"), [(["--dry-run", "--tasks", "plugin-shapes"], 0),
                                              (["--tasks", "nope"], 2)])
def test_with_the_example_plugin_installed_the_plan_path_stays_light(tmp_path, args, expect):
    """Every installed plugin is imported to plan a sweep (examples/plugin_task's, installed
    as .ci/run does): it registers plain data, as the built-ins do, for their tasks and its.
    (The plugin's own module is not in ``-X importtime``'s list: entry points are imported
    with importlib; the other dry runs above had it loaded too.)"""
    from importlib.metadata import entry_points

    assert "shapes" in {ep.name for ep in entry_points(group="lmblocks.plugins")}, (
        "the example plugin is not installed: pip install --no-build-isolation --no-deps -e "
        "examples/plugin_task (as .ci/run does)")
    mods = imported([str(ROOT / "sweep.py"), *args], tmp_path, expect)
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))
    if expect:  # the unknown task's line names the plugin's task: it was loaded
        proc = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)
        assert "from plugins: plugin-shapes" in proc.stderr
