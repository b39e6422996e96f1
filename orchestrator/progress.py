"""A one-line live progress view of a sweep, printed by the driver (off with --quiet).

Done / running / pending / failed, the best result so far with its cell, and an ETA from
the mean duration of finished trials and the current concurrency.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ray.tune import Callback

from experiments.trial import TrialSpec

DONE, FAILED = "TERMINATED", "ERROR"


class ProgressLine(Callback):
    def __init__(self, total: int, metric: str, mode: str, every_s: float = 15.0,
                 out: TextIO = sys.stdout) -> None:
        self.total, self.metric, self.mode = total, metric, mode
        self.every_s, self.out = every_s, out
        self.started: dict[str, float] = {}
        self.durations: list[float] = []
        self.best: tuple[float, str] | None = None
        self.last_print = 0.0

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if value is None:
            return
        better = self.best is None or (
            value > self.best[0] if self.mode == "max" else value < self.best[0]
        )
        if better:
            self.best = (float(value), TrialSpec.from_config(trial.config).run_name)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.started:
            self.durations.append(time.time() - self.started[trial.trial_id])
        self.print_line(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.print_line(trials, force=True)

    def on_step(self, iteration, trials, **info) -> None:
        self.print_line(trials)

    def line(self, trials) -> str:
        statuses = [t.status for t in trials]
        done, failed = statuses.count(DONE), statuses.count(FAILED)
        running = statuses.count("RUNNING")
        pending = self.total - done - failed - running
        text = (f"[sweep] {done}/{self.total} done, {running} running, {pending} pending, "
                f"{failed} failed")
        if self.best is not None:
            text += f"; best {self.metric} {self.best[0]:.4f} ({self.best[1]})"
        if self.durations and (pending or running):
            mean = sum(self.durations) / len(self.durations)
            eta = mean * (pending + running / 2) / max(1, running)
            text += f"; ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        return text

    def print_line(self, trials, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last_print >= self.every_s:
            self.last_print = now
            print(self.line(trials), file=self.out, flush=True)
