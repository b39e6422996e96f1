"""Failed trials: why, in one line and one kind; the whole text in the trial's run; one line
each at the end of the sweep; and none of Ray's tracebacks on the terminal.

A trial that fails inside Ray leaves an error file (Tune writes it in the driver, appending
one "Failure # N" block per attempt). Its last exception line is the run's
``failure.reason``, its kind ``failure.kind``, and its whole text the run's artifact
``error.txt``. The terminal gets none of it while the sweep runs: Tune would log each
failure's traceback, print an "errored" block per failure and retry, and list the trials that
did not complete; the sweep instead ends with one line per failed trial, read from MLflow.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from experiments.trial import AXES, DEFAULT_POSITION
from orchestrator.store import run_rows

NO_LM = ("family", "size", "layers")  # logged "none" when a cell has no LM
ERROR_ARTIFACT = "error.txt"  # a failed run's artifact: Tune's error file, every attempt

_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*:")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the worker's name in the error text
FAILURE_KINDS = {
    "out-of-memory": ("OutOfMemoryError", "out of memory", "can't allocate memory",
                      "MemoryError", "running low on memory"),
    "non-finite-loss": ("NonFiniteLossError",),
}


def trial_error_text(trial) -> str:
    """The whole text of the trial's Tune error file (colour codes removed); "" if none."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    return _ANSI.sub("", text)


def failure_reason(error_text: str) -> str:
    """One line from a Tune error file: its last exception line (the root cause is re-raised
    last); failing that (a worker killed by Ray's memory monitor: message, then a memory
    table and advice), its first line of text."""
    lines = [ln.strip() for ln in error_text.splitlines()
             if ln.strip() and not ln.startswith("Failure # ")]
    found = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    return (found[-1] if found else lines[0] if lines else "unknown error")[:500]


def failure_kind(reason: str) -> str:
    """out-of-memory, non-finite-loss or error: what the report and a user filter on."""
    for kind, marks in FAILURE_KINDS.items():
        if any(m in reason for m in marks):
            return kind
    return "error"


# --- the terminal: no traceback, no per-failure block while the sweep runs -------------------

class _DropRecords(logging.Filter):
    """Drops a logger's records for which ``drop(message)`` is true; keeps everything else."""

    def __init__(self, drop) -> None:
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record.getMessage())


def _only_unreported_trials(message: str) -> bool:
    """Tune's "Failed to fetch metrics for N trial(s)" when every trial listed merely has no
    result file: Tune's own result loggers are off (MLflow is the record:
    ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``), or a worker was killed before its first epoch (a
    failed trial, listed at the end). Any other reason (storage unreadable) is still shown."""
    if not message.startswith("Failed to fetch metrics for"):
        return False
    listed = [ln for ln in message.splitlines()[1:] if ln.strip()]
    return bool(listed) and all("were not found" in ln for ln in listed)


# logger -> which of its records are failed trials already told at the end of the sweep
_FILTERS = {
    "ray.tune.tune": lambda m: m.startswith("Trials did not complete"),
    "ray.tune.analysis.experiment_analysis": _only_unreported_trials,
}


def quiet_trial_failures() -> None:
    """Keep failed trials' tracebacks off the driver's terminal, with or without --quiet.

    Tune's own switch ``TUNE_PRINT_ALL_TRIAL_ERRORS=0`` stops it logging each failed task's
    traceback (the driver's and the worker's frames, ~60 lines a failure). Tune's newer
    console output prints, even at ``verbose=0``, an "errored ... Error file:" block per
    failure and retry (and a configuration box): ``RAY_AIR_NEW_OUTPUT=0`` selects the older
    console output, which at ``verbose=0`` prints nothing. The logging filters drop Tune's
    end-of-run list of incomplete trials. Warnings and errors of the sweep itself (a failing
    callback, an unreachable store) are untouched, and the progress line is the sweep's own.
    Set here, not by ``setdefault``: the sweep's terminal output is the sweep's to decide, and
    the whole text of every failure is in its run (``error.txt``)."""
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name, drop in _FILTERS.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropRecords) for f in log.filters):
            log.addFilter(_DropRecords(drop))


# --- the end of the sweep: one line per failed trial, from MLflow -----------------------------

@dataclass(frozen=True)
class FailedTrial:
    cell: str  # "family=opt size=125m layers=5 task=digits control=pretrained seed=0"
    kind: str
    reason: str
    run_id: str

    def line(self) -> str:
        return f"failed: {self.cell} | {self.kind} | {self.reason} | MLflow run {self.run_id}"


def failed_trials(tracking_uri: str, parent_run_id: str) -> list[FailedTrial]:
    """The sweep run's child runs that ended FAILED, in the order they started. A retried
    trial keeps its run, so a retry that succeeded left it FINISHED and it is not here; a
    FAILED run whose trial (same full config) has a FINISHED run in the sweep is not either."""
    client = MlflowClient(tracking_uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    # the finished cells from one narrow read; only the FAILED runs are read whole
    finished = {r.trial_key for r in run_rows(client, exp_id, "mlflow.parentRunId",
                                               parent_run_id) if r.status == "FINISHED"}
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' AND "
                              "attributes.status = 'FAILED'",
                              max_results=50_000, order_by=["attributes.start_time ASC"])
    failed = []
    for run in runs:
        tags = run.data.tags
        if tags.get("lmblocks.trial_key") in finished:
            continue
        params = run.data.params
        cell = " ".join(f"{axis}={params[axis]}" for axis in AXES  # no LM: no family/size/layers
                        if params.get(axis) and not (axis in NO_LM and params[axis] == "none")
                        and not (axis == "position" and params[axis] == DEFAULT_POSITION))
        reason = " ".join(tags.get("failure.reason", "unknown error").split())
        failed.append(FailedTrial(cell or run.info.run_name, tags.get("failure.kind", "error"),
                                  reason, run.info.run_id))
    return failed
