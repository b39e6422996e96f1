"""A trial's worker that Ray stops with SIGTERM exits without a traceback on the console."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Ray's worker raises SystemExit from its SIGTERM handler; when the signal arrives while a
# weakref callback runs, Python reports it as an unraisable exception. Raising SystemExit in
# the callback is that case without the race of a real signal.
SCRIPT = """
import sys, weakref
quiet = sys.argv[1] == "quiet"
if quiet:
    from orchestrator.worker_exit import exit_quietly_on_sigterm
    exit_quietly_on_sigterm()
    exit_quietly_on_sigterm()  # a reused actor calls it again: still one hook
class Thing: pass
def stop(_): raise SystemExit(1)
def broken(_): raise ValueError("a real bug in a callback")
a, b = Thing(), Thing()
ra, rb = weakref.ref(a, stop), weakref.ref(b, broken)
del a, b
print("went on")
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def test_sigterm_exit_in_a_callback_prints_nothing_but_other_errors_still_print():
    loud, quiet = _run("loud"), _run("quiet")
    assert "SystemExit" in loud.stderr  # what Python prints without the hook
    assert quiet.returncode == 0 and quiet.stdout.strip() == "went on"
    assert "SystemExit" not in quiet.stderr
    assert "ValueError: a real bug in a callback" in quiet.stderr
    assert quiet.stderr.count("Exception ignored") == 1
