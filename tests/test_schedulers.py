"""The queued schedulers choose exactly the trial Tune's own FIFO scan would, for any history
of adds, starts, ends, failures (requeued at the end, as Tune does) and pauses, while looking
at each trial a bounded number of times (``orchestrator/schedulers.py``)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler

from orchestrator.schedulers import QueuedASHAScheduler, QueuedFIFOScheduler


class FakeTrial:
    """What a scheduler reads of a trial: its status (hashable, by identity, as Trial is)."""

    def __init__(self, n: int) -> None:
        self.n, self.status, self.trial_id = n, Trial.PENDING, f"t{n}"

    def __repr__(self) -> str:
        return f"t{self.n}:{self.status}"


class Controller:
    """Tune's trial list: added at the end; a trial that errors and is retried moves to the
    end (``TuneController._requeue_trial``)."""

    def __init__(self, schedulers) -> None:
        self.trials: list[FakeTrial] = []
        self.schedulers = schedulers

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def add(self) -> None:
        trial = FakeTrial(len(self.trials))
        self.trials.append(trial)
        for s in self.schedulers:
            s.on_trial_add(self, trial)

    def requeue(self, trial: FakeTrial) -> None:
        for s in self.schedulers:
            s.on_trial_error(self, trial)
        trial.status = Trial.PENDING
        self.trials.remove(trial)
        self.trials.append(trial)


OPS = st.lists(st.tuples(st.sampled_from(["add", "start", "end", "fail", "pause", "choose"]),
                         st.integers(0, 50)), max_size=120)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)  # the same cases
@given(OPS)
def test_the_queue_chooses_what_tune_s_fifo_scan_chooses(ops):
    fifo, queued = FIFOScheduler(), QueuedFIFOScheduler()
    c = Controller([fifo, queued])
    for op, i in ops:
        if op == "add" or not c.trials:
            c.add()
            continue
        trial = c.trials[i % len(c.trials)]
        if op == "start" and trial.status in (Trial.PENDING, Trial.PAUSED):
            trial.status = Trial.RUNNING
        elif op == "end" and trial.status == Trial.RUNNING:
            trial.status = Trial.TERMINATED
        elif op == "fail" and trial.status == Trial.RUNNING:
            c.requeue(trial)
        elif op == "pause" and trial.status == Trial.RUNNING:
            trial.status = Trial.PAUSED
        assert queued.choose_trial_to_run(c) is fifo.choose_trial_to_run(c)


def test_each_trial_is_passed_over_once_not_at_every_step():
    """A long study: ended trials are dropped from the queue when first passed, so the
    queue holds the trials running or waiting, not the study."""
    sched = QueuedFIFOScheduler()
    c = Controller([sched])
    for _ in range(10_000):
        c.add()
    for trial in c.trials[:9_990]:
        trial.status = Trial.TERMINATED
    assert sched.choose_trial_to_run(c) is c.trials[9_990]
    assert len(sched._may_run) == 10
    c.trials[9_990].status = Trial.RUNNING
    assert sched.choose_trial_to_run(c) is c.trials[9_991] and len(sched._may_run) == 10
    c.trials[9_990].status = Trial.TERMINATED
    assert sched.choose_trial_to_run(c) is c.trials[9_991] and len(sched._may_run) == 9


def test_asha_keeps_its_brackets_and_uses_the_queue():
    asha = QueuedASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=4,
                               grace_period=1, reduction_factor=2)
    c = Controller([asha])
    c.add()
    assert c.trials[0].trial_id in asha._trial_info  # ASHA's own on_trial_add ran
    assert asha.choose_trial_to_run(c) is c.trials[0]
