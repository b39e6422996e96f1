"""The test suite as a guest on its machine (issue 28): every test runs under memory ceilings,
a test that passes one fails alone, named, with its peak, and the rest of the run goes on.

- **A process's ceiling** (``LMBLOCKS_TEST_MEMORY_GB``; default 8 GiB, less where the workers
  at it would not fit in 80% of the machine; 0 turns it off). Each process that runs tests
  (every xdist worker, or the one process with ``-n 0``) sets its RLIMIT_DATA to it. That
  limit counts a process's private writable memory, where every allocation of Python, numpy
  and torch lands, and the processes a test starts (a sweep, Ray's workers) inherit it. A
  runaway allocation then fails where it happens (MemoryError, torch's "can't allocate
  memory") instead of growing until the kernel's OOM killer ends the worker.
- **A test's processes together** (``LMBLOCKS_TEST_TREE_MEMORY_GB``; default 60% of the
  machine): a watchdog thread sums the resident memory of the process and all its
  descendants five times a second; past the ceiling it kills the largest descendant and the
  test fails, naming what it killed.
- **Per-test peak memory**: the process's own peak (the kernel's VmHWM, reset before each
  test) and the watchdog's peak of its processes together travel with each test's report; the
  run's summary names the largest five, and ``LMBLOCKS_TEST_PEAKS=FILE`` appends one JSON line
  per test (its id, worker, peaks, seconds) to compare runs.
- **One Ray cluster at a time**: a test outside the ``ray`` xdist group (tests/conftest.py)
  that starts a Ray cluster, beside the Ray tests running on the other worker, fails, naming
  the fix.

Time limits are pytest-timeout's (``timeout`` in pyproject.toml), with pytest's own
faulthandler as the backstop for a test stuck where no signal reaches; a crashed worker is
replaced without stopping the run by tests/xdist_crash_safe.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch

GB = 1 << 30
SAMPLE_S = 0.2
RAY_DAEMONS = ("raylet", "gcs_server")
PEAK_KEY, TREE_KEY = "peak_rss_bytes", "tree_peak_rss_bytes"


@dataclass(frozen=True)
class Ceilings:
    """In bytes; 0: none."""

    process: int  # the RLIMIT_DATA of each test process and of every process it starts
    tree: int  # a test's processes together (their proportional share of resident memory)


def _gib(name: str, default: float) -> int:
    value = os.environ.get(name)
    if value is None:
        return int(default)
    try:
        return int(float(value) * GB)
    except ValueError:
        raise pytest.UsageError(
            f"{name}={value!r}: not a number of GiB (0 turns the ceiling off)") from None


def memory_ceilings(total: int, workers: int) -> Ceilings:
    """``LMBLOCKS_TEST_MEMORY_GB`` a process (default 8 GiB, less where the workers at it
    would not fit in 80% of ``total``) and ``LMBLOCKS_TEST_TREE_MEMORY_GB`` a test's processes
    together (default 60% of ``total``: two sweeps at once, each with its own Ray cluster,
    hold about 10 GiB; the other worker's tests a few)."""
    process = _gib("LMBLOCKS_TEST_MEMORY_GB", min(8 * GB, 0.8 * total / max(workers, 1)))
    return Ceilings(process, _gib("LMBLOCKS_TEST_TREE_MEMORY_GB", max(process, 0.6 * total)))


def _gb(n: int) -> str:
    return f"{n / GB:.2f} GB"


def read_peak_rss() -> int | None:
    """This process's peak resident memory since the last reset (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    try:  # "5" resets VmHWM to the current RSS (proc(5), clear_refs)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


@dataclass
class TestMemory:
    """What the watchdog saw during one test."""

    tree_peak: int = 0
    largest: int = 0  # RSS of its largest process (the peak where VmHWM cannot be read)
    killed: list[str] = field(default_factory=list)
    started_ray: bool = False


class Watchdog(threading.Thread):
    """Samples the resident memory of this process and its descendants; past the tree ceiling
    it kills the largest descendant (SIGKILL: a runaway may not answer anything milder).

    RSS counts the pages a forked child shares with its parent (a DataLoader worker) in both,
    so where the sum of RSS passes half the ceiling the proportional share (PSS, which counts
    each page once) is read instead: at most every PSS_EVERY_S (it costs ~50 ms a 3 GB
    process), and at every sample whose RSS passes the ceiling."""

    PSS_EVERY_S = 2.0

    def __init__(self, ceiling: int) -> None:
        super().__init__(name="lmblocks-memory-watchdog", daemon=True)
        self.ceiling = ceiling
        self.me = psutil.Process()
        self.lock = threading.Lock()
        self.test = TestMemory()
        self.last_pss = 0.0

    def begin(self) -> None:
        with self.lock:
            self.test = TestMemory()

    def end(self) -> TestMemory:
        self.sample()  # the last moments of a short test
        with self.lock:
            return self.test

    def run(self) -> None:
        while True:
            time.sleep(SAMPLE_S)
            with contextlib.suppress(Exception):  # a process that ended mid-read: next sample
                self.sample()

    def sample(self) -> None:
        procs = [self.me]
        try:
            procs += self.me.children(recursive=True)
        except psutil.Error:
            pass
        sizes: list[tuple[int, psutil.Process]] = []
        for p in procs:
            try:
                sizes.append((p.memory_info().rss, p))
            except psutil.Error:
                continue
        total = sum(rss for rss, _ in sizes)
        held = total  # the tree's memory as far as this sample knows it
        if self.ceiling and len(sizes) > 1 and total > self.ceiling / 2:
            if total <= self.ceiling and time.monotonic() - self.last_pss < self.PSS_EVERY_S:
                held = 0  # between two readings of PSS, under the ceiling: no figure
            else:  # due, or over the ceiling by RSS: a kill is decided on PSS alone
                self.last_pss = time.monotonic()
                held = _pss(p for _, p in sizes) or total
        ray = any(_name(p) in RAY_DAEMONS for _, p in sizes[1:])
        with self.lock:
            t = self.test
            t.tree_peak = max(t.tree_peak, held)
            t.started_ray |= ray
            t.largest = max(t.largest, max(rss for rss, _ in sizes))
        if self.ceiling and held > self.ceiling:
            self._kill_largest_child(sizes[1:], held)

    def _kill_largest_child(self, children: list[tuple[int, psutil.Process]], held: int) -> None:
        if not children:
            return  # this process alone: its own RLIMIT_DATA bounds it
        rss, victim = max(children, key=lambda s: s[0])
        what = f"pid {victim.pid} ({_command(victim)}, {_gb(rss)})"
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.Error:
            return
        with self.lock:
            self.test.killed.append(
                f"the test's processes held {_gb(held)} (ceiling {_gb(self.ceiling)} "
                f"together, LMBLOCKS_TEST_TREE_MEMORY_GB): killed {what}")


def _pss(procs) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.Error, AttributeError):  # gone, or no PSS on this system: RSS
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    return total


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def _command(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:80] or p.name()
    except psutil.Error:
        return "?"


def _in_ray_group(item: pytest.Item) -> bool:
    return any(m.args[:1] == ("ray",) or m.kwargs.get("name") == "ray"
               for m in item.iter_markers("xdist_group"))


class SuiteGuard:
    """The per-process half: limits, watchdog, and what each test's reports carry.

    The process ceiling holds while a test's own code runs; its setup, teardown and the
    writing of its report get HEADROOM more, so that a test that failed at the ceiling (its
    memory still held by the traceback) can still be reported, not crash its worker. Python's
    ``sys.last_*`` (pytest keeps the last failure there for post-mortem debugging) is cleared
    after each test, so a runaway's memory does not stay held into the next one."""

    HEADROOM = GB

    def __init__(self, config: pytest.Config) -> None:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        self.parallel = workers > 1
        self.ceilings = memory_ceilings(psutil.virtual_memory().total, workers)
        # torch's OpenMP threads, started now: libgomp ends the whole process (exit 1, no
        # traceback) when it cannot start a thread, as at the ceiling (a thread's stack is
        # private memory); started once, its threads are reused by every later test.
        torch.ones(1 << 22).add_(1).sum()
        self._limit(self.HEADROOM)
        self.watchdog = Watchdog(self.ceilings.tree)
        self.watchdog.start()

    def _limit(self, extra: int) -> None:
        if not self.ceilings.process:
            return
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = self.ceilings.process + extra
        resource.setrlimit(resource.RLIMIT_DATA,
                           (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        reset_peak_rss()
        self.watchdog.begin()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        self._limit(0)
        try:
            return (yield)
        finally:
            self._limit(self.HEADROOM)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        rep = yield
        memory = self.watchdog.end()
        peak = read_peak_rss() or memory.largest
        if memory.killed:
            rep.outcome = "failed"
            rep.longrepr = f"memory ceiling: {'; '.join(memory.killed)}"
            memory.killed.clear()  # told once, in the phase it happened
        elif (rep.when == "call" and rep.passed and memory.started_ray and self.parallel
              and not _in_ray_group(item)):
            rep.outcome = "failed"
            rep.longrepr = ("this test started a Ray cluster outside the 'ray' xdist group, "
                            "beside the Ray tests of the other worker: mark it "
                            "@pytest.mark.slow in a module of tests/conftest.py's RAY_MODULES")
        if rep.failed:
            text = (f"peak RSS {_gb(peak)} (this process), {_gb(memory.tree_peak)} (with the "
                    f"processes it started); {_describe(self.ceilings)}")
            if hasattr(rep.longrepr, "addsection"):
                rep.longrepr.addsection("memory", text)
            else:
                rep.longrepr = f"{rep.longrepr}\n{text}"
        if rep.when == "teardown":
            rep.user_properties += [(PEAK_KEY, peak), (TREE_KEY, memory.tree_peak)]
            for name in ("last_type", "last_value", "last_traceback", "last_exc"):
                if hasattr(sys, name):
                    delattr(sys, name)
        return rep


class PeakReport:
    """The controller's half (or the one process's): gathers each test's peaks from its
    teardown report and names the largest at the end of the run."""

    def __init__(self, config: pytest.Config) -> None:
        self.rows: list[dict] = []
        self.out = os.environ.get("LMBLOCKS_TEST_PEAKS")
        self.seconds: dict[str, float] = {}
        self.ceilings = memory_ceilings(psutil.virtual_memory().total, _workers(config))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration
        props = dict(report.user_properties)
        if report.when != "teardown" or PEAK_KEY not in props:
            return
        node = getattr(report, "node", None)  # set by xdist on a worker's report
        row = {"test": report.nodeid, "worker": node.gateway.id if node else "main",
               "peak_rss": props[PEAK_KEY], "tree_peak_rss": props[TREE_KEY],
               "seconds": round(self.seconds[report.nodeid], 2)}
        self.rows.append(row)
        if self.out:
            with open(self.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.rows:
            return
        tr = terminalreporter
        tr.write_sep("-", f"memory: the largest per-test peaks ({_describe(self.ceilings)})")
        for row in sorted(self.rows, key=lambda r: -r["tree_peak_rss"])[:5]:
            tr.write_line(f"{_gb(row['tree_peak_rss']):>9} with its processes, "
                          f"{_gb(row['peak_rss']):>9} its worker  {row['test']}")
        top = max(self.rows, key=lambda r: r["peak_rss"])
        tr.write_line(f"largest in a worker itself: {_gb(top['peak_rss'])}  {top['test']}")


def _workers(config: pytest.Config) -> int:
    return int(getattr(config.option, "numprocesses", None) or 1)


def pytest_configure(config: pytest.Config) -> None:
    worker = hasattr(config, "workerinput")
    controller = not worker and config.getoption("dist", "no") != "no" and bool(
        config.getoption("tx", None))  # xdist's own test for a distributed run
    if not controller:  # this process runs the tests
        config.pluginmanager.register(SuiteGuard(config), "lmblocks-suite-guard")
    if not worker:
        config.pluginmanager.register(PeakReport(config), "lmblocks-peak-report")


def pytest_report_header(config: pytest.Config) -> str:
    ceilings = memory_ceilings(psutil.virtual_memory().total, _workers(config))
    return f"lmblocks: {_describe(ceilings)}; per-test timeout {config.getini('timeout')} s"


def _describe(c: Ceilings) -> str:
    one = f"{_gb(c.process)} a process" if c.process else "no ceiling a process"
    tree = f"{_gb(c.tree)} a test's processes together" if c.tree else "none together"
    return f"memory ceiling {one} (LMBLOCKS_TEST_MEMORY_GB), {tree} (LMBLOCKS_TEST_TREE_MEMORY_GB)"
