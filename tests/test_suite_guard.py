"""The suite's guard (tests/suite_guard.py, tests/xdist_crash_safe.py, the timeouts in
pyproject.toml), shown on runaway tests that the default run skips: one allocates without
end, one starts a process that does, one sleeps past its time limit, one is stuck where no
signal reaches it, one kills its own worker, one starts a Ray daemon outside the Ray group.
``LMBLOCKS_TEST_RUNAWAY=memory,child-memory,sleep,stuck,crash,ray`` runs them (any subset);
the default run's test below runs them all in a pytest of its own, two workers as in CI, and
checks that each fails alone, named, with its reason, and that the tests beside it pass."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.suite_guard import GB, Ceilings, memory_ceilings

RUNAWAY = set(filter(None, os.environ.get("LMBLOCKS_TEST_RUNAWAY", "").split(",")))
ROOT = Path(__file__).resolve().parents[1]


def runaway(kind: str):
    return pytest.mark.skipif(kind not in RUNAWAY,
                              reason=f"a runaway test: LMBLOCKS_TEST_RUNAWAY={kind} runs it")


def beside(test):
    return pytest.mark.skipif(not RUNAWAY, reason="runs beside the runaway tests")(test)


@runaway("memory")
def test_runaway_allocation():
    chunks = [torch.ones(1 << 28) for _ in range(16)]  # 1 GiB each, written: resident
    assert not chunks, "allocated 16 GiB: no ceiling stopped it"


@runaway("child-memory")
def test_runaway_child_allocation():
    """A child that lifts its own RLIMIT_DATA and allocates: the watchdog must end it (it
    stops by itself at 8 GiB, so without the guard this test passes and is caught)."""
    code = ("import resource, time\n"
            "resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY,) * 2)\n"
            "held = []\n"
            "for _ in range(64):\n"
            "    held.append(bytearray(b'x' * (128 << 20))); time.sleep(0.1)\n")
    subprocess.run([sys.executable, "-c", code], check=False, timeout=120)


@runaway("sleep")
def test_runaway_sleep():
    time.sleep(3600)


@runaway("stuck")
def test_runaway_stuck_where_no_signal_reaches():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # pytest-timeout's signal
    time.sleep(3600)


@runaway("crash")
@pytest.mark.xdist_group("ray")
def test_runaway_crash():
    os._exit(3)


@runaway("ray")
def test_runaway_starts_ray_outside_the_ray_group(tmp_path):
    raylet = tmp_path / "raylet"  # what the guard looks for: a process named like Ray's daemon
    shutil.copy(shutil.which("sleep"), raylet)
    subprocess.run([str(raylet), "1"], check=True)


@beside
@pytest.mark.xdist_group("ray")
@pytest.mark.parametrize("i", range(4))
def test_in_the_ray_group_beside_the_crash(i):
    assert sum(range(i + 1)) == i * (i + 1) // 2


@beside
@pytest.mark.parametrize("i", range(4))
def test_beside_the_runaways(i):
    assert torch.arange(i + 1).sum().item() == i * (i + 1) // 2


def test_the_ceilings_default_to_what_two_workers_can_share(monkeypatch):
    monkeypatch.delenv("LMBLOCKS_TEST_MEMORY_GB", raising=False)
    monkeypatch.delenv("LMBLOCKS_TEST_TREE_MEMORY_GB", raising=False)
    assert memory_ceilings(24 * GB, 2) == Ceilings(8 * GB, int(0.6 * 24 * GB))
    assert memory_ceilings(16 * GB, 2) == Ceilings(int(0.8 * 16 * GB / 2), int(0.6 * 16 * GB))
    monkeypatch.setenv("LMBLOCKS_TEST_MEMORY_GB", "1.5")
    monkeypatch.setenv("LMBLOCKS_TEST_TREE_MEMORY_GB", "0")
    assert memory_ceilings(24 * GB, 2) == Ceilings(int(1.5 * GB), 0)
    monkeypatch.setenv("LMBLOCKS_TEST_MEMORY_GB", "lots")
    with pytest.raises(pytest.UsageError, match="LMBLOCKS_TEST_MEMORY_GB='lots'"):
        memory_ceilings(24 * GB, 2)


@pytest.mark.slow
@pytest.mark.skipif(bool(RUNAWAY), reason="the runaway run itself")
def test_runaway_tests_fail_alone_named_and_the_run_goes_on():
    env = {**os.environ, "LMBLOCKS_TEST_RUNAWAY": "memory,child-memory,sleep,stuck,crash,ray",
           "LMBLOCKS_TEST_MEMORY_GB": "2", "LMBLOCKS_TEST_TREE_MEMORY_GB": "3"}
    env.pop("LMBLOCKS_TEST_PEAKS", None)
    env["COLUMNS"] = "1000"  # the short summary's lines whole
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__).relative_to(ROOT)), "-n", "2",
         "--dist", "loadgroup", "-p", "no:cacheprovider", "-rfEs", "-o", "timeout=15",
         "-o", "faulthandler_timeout=25"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    failed = dict(re.findall(r"^FAILED (\S+) - (.*)$", proc.stdout, re.MULTILINE))
    me = "tests/test_suite_guard.py::"
    assert sorted(failed) == sorted(f"{me}{t}" for t in (
        "test_runaway_allocation", "test_runaway_child_allocation", "test_runaway_sleep",
        "test_runaway_stuck_where_no_signal_reaches", "test_runaway_crash@ray",
        "test_runaway_starts_ray_outside_the_ray_group")), out[-4000:]
    assert "can't allocate memory" in failed[f"{me}test_runaway_allocation"], out[-4000:]
    assert "2.00 GB a process" in proc.stdout, out[-4000:]  # its peak, beside the failure
    assert failed[f"{me}test_runaway_child_allocation"].startswith("memory ceiling:"), out
    assert "Timeout" in failed[f"{me}test_runaway_sleep"], out[-4000:]
    stuck = failed[f"{me}test_runaway_stuck_where_no_signal_reaches"]
    assert "crashed while running" in stuck and "Timeout (0:00:25)!" in proc.stderr, out
    assert "crashed while running" in failed[f"{me}test_runaway_crash@ray"], out[-4000:]
    assert "outside the 'ray' xdist group" in failed[
        f"{me}test_runaway_starts_ray_outside_the_ray_group"], out[-4000:]
    # every test beside them ran and passed, and the crashed tests were not run again
    assert re.search(r"^=+ 6 failed, 9 passed, 1 skipped in ", proc.stdout, re.MULTILINE), (
        out[-4000:])
