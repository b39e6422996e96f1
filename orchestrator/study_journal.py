"""The sweep's Optuna study on disk: Optuna's journal, with the questions asked at every
trial answered without walking every trial of the study (``SweepJournalStorage``)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Container
from dataclasses import dataclass, field

from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState


@dataclass
class _StudyIndex:
    n_trials: int
    maybe_waiting: set[int] = field(default_factory=set)  # trial ids, pruned as they run


class SweepJournalStorage(JournalStorage):
    """Optuna's ``JournalStorage`` (the study's journal beside the Ray results), with the two
    questions a sweep asks at every trial answered without walking every trial of the study.

    ``Study.ask`` first looks for an enqueued trial (``get_all_trials(states=(WAITING,))``)
    and ``CellGridSampler.plan_done`` counts the study's trials (``get_n_trials``);
    ``JournalStorage`` answers both by walking the study's trials, so the driver's cost a
    trial grew with the study: py-spy over a 5,400-trial study put that walk at ~3 ms a
    trial near its start and ~17 ms near its end (``bench/scale.py``), growing on.
    Here each study's trial count and the ids of its trials that may be waiting are kept:
    built by one walk at first use (a resumed sweep's driver walks its journal once), then
    kept up by this storage's own writes (a trial created, or enqueued as WAITING, by this
    process). A trial set back to WAITING drops the index (rebuilt at the next question).
    So the index assumes that no other process creates trials in the study while this one
    runs, as a sweep's driver is the only one to ask its journal for trials (another may end
    trials: ``release_stale_trials``); every other read is ``JournalStorage``'s own.
    (Optuna's ``InMemoryStorage``, the study of a sweep whose ``--storage`` is a URI, keeps
    such a pointer to its waiting trials itself.)"""

    def __init__(self, log_storage) -> None:
        super().__init__(log_storage)
        self._index_lock = threading.Lock()
        self._index: dict[int, _StudyIndex] = {}

    def __getstate__(self) -> dict:
        """Tune pickles the searcher with its study (its experiment snapshot); the index is
        rebuilt from the journal after unpickling, as the journal itself is replayed."""
        state = super().__getstate__()
        state.pop("_index", None)
        state.pop("_index_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._index_lock = threading.Lock()
        self._index = {}

    def _study_index(self, study_id: int) -> _StudyIndex:
        with self._index_lock:
            index = self._index.get(study_id)
        if index is None:
            trials = super().get_all_trials(study_id, deepcopy=False)
            index = _StudyIndex(len(trials), {t._trial_id for t in trials
                                              if t.state == TrialState.WAITING})
            with self._index_lock:
                self._index[study_id] = index
        return index

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        with self._index_lock:
            index = self._index.get(study_id)
            if index is not None:
                index.n_trials += 1
                if template_trial is not None and template_trial.state == TrialState.WAITING:
                    index.maybe_waiting.add(trial_id)
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values=None) -> bool:
        changed = super().set_trial_state_values(trial_id, state, values)
        if state == TrialState.WAITING:  # not a move Optuna makes itself: walk afresh
            with self._index_lock:
                self._index.clear()
        return changed

    def get_n_trials(self, study_id: int, state=None) -> int:
        if state is not None:
            return super().get_n_trials(study_id, state)
        return self._study_index(study_id).n_trials

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if not (isinstance(states, (tuple, list, set, frozenset))
                and set(states) == {TrialState.WAITING}):
            return super().get_all_trials(study_id, deepcopy, states)
        index = self._study_index(study_id)
        with self._index_lock:
            ids = sorted(index.maybe_waiting)
        trials = [self.get_trial(i) for i in ids]  # each O(1), after the journal's new lines
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        with self._index_lock:  # a trial leaves WAITING for good (popped, finished)
            index.maybe_waiting.difference_update(
                t._trial_id for t in trials if t.state != TrialState.WAITING)
        return copy.deepcopy(waiting) if deepcopy else waiting
