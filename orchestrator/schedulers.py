"""Tune's trial schedulers, choosing the next trial to run without scanning every trial.

Tune's ``FIFOScheduler`` (and ``ASHAScheduler``, which inherits its choice) looks for the
first PENDING trial by walking the experiment's whole trial list, at every step of the
controller; finished trials come first in that list, so a study of n trials pays O(n) a
step, O(n^2) over the study. Measured on the 20k-cell study of ``bench/scale.py``: 17% of
the driver's CPU by its 4,500th trial, and growing with every trial. Here the trials that
may still run are kept in arrival order; ended trials are dropped from it as they are
passed, so a step looks at the trials running or waiting, not at the whole study. The choice is Tune's:
the first PENDING trial in the controller's order (an errored trial to retry goes to the end,
as Tune moves it there), else the first PAUSED one.
"""

from __future__ import annotations

from collections import OrderedDict

from ray.tune import Stopper
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from experiments.plateau import should_stop

_ENDED = (Trial.TERMINATED, Trial.ERROR)


class _ArrivalQueue:
    """The choice of ``FIFOScheduler.choose_trial_to_run`` at O(trials running or waiting) a
    step. A trial enters at ``on_trial_add`` (new, or restored by ``--resume``) and again, at
    the end, at ``on_trial_error`` (Tune then sets it PENDING to retry it: ``_requeue_trial``);
    it leaves once passed TERMINATED or ERROR, states it leaves only through those two."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._may_run: OrderedDict[Trial, None] = OrderedDict()

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self._may_run[trial] = None

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        super().on_trial_error(tune_controller, trial)
        self._may_run[trial] = None
        self._may_run.move_to_end(trial)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        passed, paused, chosen = [], None, None
        for trial in self._may_run:
            if trial.status == Trial.PENDING:
                chosen = trial
                break
            if trial.status == Trial.PAUSED:
                paused = paused or trial
            elif trial.status in _ENDED:  # back here only through on_trial_error or a restore
                passed.append(trial)
        for trial in passed:
            del self._may_run[trial]
        return chosen or paused


class QueuedFIFOScheduler(_ArrivalQueue, FIFOScheduler):
    """Tune's FIFO scheduler (the default), without the O(trials) scan a step."""


class QueuedASHAScheduler(_ArrivalQueue, ASHAScheduler):
    """Tune's ASHA, without the O(trials) scan a step (ASHA stops trials, never pauses)."""


class PlateauStopper(Stopper):
    """``--epochs auto:MAX``: a trial stops after the epoch at which the claims' plateau rule
    (``experiments.plateau.should_stop``) finds its validation metric no longer improving,
    once it has left chance; MAX (its ``epochs``) bounds it. Histories are kept by epoch, so
    a retried epoch replaces its first report; after ``--resume`` a trial's history starts
    again from its restored epoch (it may run longer, never shorter)."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.higher = metric, mode == "max"
        self._seen: dict[str, tuple[dict[int, float], dict[int, float]]] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        if not (result.get("config") or {}).get("auto_epochs", True):
            return False
        values, losses = self._seen.setdefault(trial_id, ({}, {}))
        epoch = int(result.get("epoch", len(values) + 1))
        if self.metric in result:
            values[epoch] = result[self.metric]
        if "train_loss" in result:
            losses[epoch] = result["train_loss"]
        return should_stop([values[e] for e in sorted(values)], self.higher,
                           [losses[e] for e in sorted(losses)], result.get("chance_loss"))

    def stop_all(self) -> bool:
        return False
