"""Where the trial logger's MLflow writes run: in the driver's own thread, or in a process
beside the driver that makes them in the order they were made.

Why a process: every MLflow write is mostly CPU in SQLAlchemy and MLflow's own checks
(~7 ms on an idle core with a SQLite store, ~16 ms on a busy one), a trial makes three
after its run exists (the params, each epoch's batch, its end), and Tune's driver loop is one
thread that waits for each. A thread would not help: the writes hold the GIL. MLflow's own
async logging (``synchronous=False``) is a thread too, and ``set_terminated`` shuts down its
queue for the whole store, possibly before a run's queued metrics land.

Order and crash consistency: one process, one queue, so the writes land in the order they
were made, and a run's end never lands before its metrics. ``flush`` waits for every write
made so far; the logger flushes whenever Tune snapshots the experiment (``get_state``), before
it reads MLflow, and at the experiment's end. A driver killed between two snapshots loses at
most the writes since the last one, which is what ``--resume`` redoes: Tune restores the
trials as they were at that snapshot.

Errors: a write that fails (a tracking server down for longer than MLflow's own retries) is
raised in the driver at the next flush, with the failed call named, as the synchronous write
would have been raised at once. Writes after it are still made.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import traceback
from typing import Protocol

from mlflow.tracking import MlflowClient

_FLUSH = "__flush__"
_CLOSE = "__close__"
# Writes queued before the driver waits for the writer: memory for a tracking server that is
# down (a write is a few kB), a bound on what a killed driver can lose.
MAX_QUEUED = 10_000


class MlflowWriteError(RuntimeError):
    """A write the writer process could not make."""


class RunWriter(Protocol):
    def submit(self, method: str, *args, **kwargs) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class InlineWriter:
    """Each write made at once, in the caller's thread: for a logger used without Tune."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client

    def submit(self, method: str, *args, **kwargs) -> None:
        getattr(self.client, method)(*args, **kwargs)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _write_loop(tracking_uri: str, jobs, acks) -> None:
    """The writer process: each job is an ``MlflowClient`` method and its arguments."""
    # Ctrl-C reaches the whole process group; the driver decides when to stop (it flushes
    # first), so the writer does not die with queued writes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    client = MlflowClient(tracking_uri)
    errors: list[str] = []
    while True:
        method, args, kwargs = jobs.get()
        if method in (_FLUSH, _CLOSE):
            acks.put((args[0], errors[0] if errors else None, len(errors)))
            errors.clear()
            if method == _CLOSE:
                return
            continue
        try:
            getattr(client, method)(*args, **kwargs)
        except Exception:  # noqa: BLE001 -- reported to the driver at the next flush
            errors.append(f"MlflowClient.{method}{_short(args)} failed:\n"
                          f"{traceback.format_exc()}")


def _short(args: tuple) -> str:
    text = ", ".join(repr(a) for a in args[:2])
    return f"({text[:120]}{', ...' if len(args) > 2 or len(text) > 120 else ''})"


class ProcessWriter:
    """MLflow writes made by one process beside the driver, in the order they were made."""

    def __init__(self, tracking_uri: str) -> None:
        # spawn: the driver runs Ray's threads, and a fork of it could inherit a held lock
        ctx = mp.get_context("spawn")
        self._jobs = ctx.Queue(MAX_QUEUED)
        self._acks = ctx.Queue()
        self._proc = ctx.Process(target=_write_loop, args=(tracking_uri, self._jobs, self._acks),
                                 name="lmblocks-mlflow-writer", daemon=True)
        self._proc.start()
        self._token = 0
        self._pending = 0  # writes submitted since the last flush
        self._closed = False
        self._failed: str | None = None  # the first failed write: every later flush says so

    def submit(self, method: str, *args, **kwargs) -> None:
        if self._closed:
            raise MlflowWriteError(f"MlflowClient.{method}: the MLflow writer is closed")
        self._alive()
        self._jobs.put((method, args, kwargs))
        self._pending += 1

    def flush(self) -> None:
        """Wait until every write submitted so far is made; raise the first that failed."""
        if self._pending and not self._closed:
            self._wait(_FLUSH)
        self._raise_failed()

    def close(self) -> None:
        """Flush, then end the writer process."""
        if self._closed:
            self._raise_failed()
            return
        try:
            self._wait(_CLOSE)
            self._raise_failed()
        finally:
            self._closed = True
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.kill()

    def _wait(self, what: str) -> None:
        self._token += 1
        self._alive()
        self._jobs.put((what, (self._token,), {}))
        while True:
            try:
                token, error, n_errors = self._acks.get(timeout=1.0)
            except queue.Empty:
                self._alive()
                continue
            if token == self._token:
                break
        self._pending = 0
        if error is not None and self._failed is None:
            more = f" ({n_errors - 1} more failed writes after it)" if n_errors > 1 else ""
            self._failed = f"{error.rstrip()}{more}"

    def _raise_failed(self) -> None:
        if self._failed is not None:
            raise MlflowWriteError(self._failed)

    def _alive(self) -> None:
        if not self._proc.is_alive():
            raise MlflowWriteError(
                f"the MLflow writer process exited (code {self._proc.exitcode}); writes "
                f"since the last flush may be lost: resume the sweep (--resume) to redo them")

