"""The search spaces Ray Tune's ``OptunaSearch`` samples, and the Optuna study behind them.

``--search grid`` walks the plan's rows once each (``CellGridSampler``, Optuna's GridSampler
at a constant cost per trial);
``--search optuna`` samples a define-by-run conditional space built from the plan (TPE by
default); ``--search-hparams`` adds lr, weight decay and the adapters' init to that search
(``joint``) or gives every plan row a search of its own (``per-cell``). The study is
journaled next to the Ray results, so a resumed sweep continues it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GPSampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from encoders.lm.block_options import ADAPTER_INITS
from experiments.trial import AXES, ENCODER_CONFIG, TrialSpec
from orchestrator.study_journal import SweepJournalStorage

SAMPLERS = {"tpe": TPESampler, "random": RandomSampler, "cmaes": CmaEsSampler,
            "gp": GPSampler, "qmc": QMCSampler}
SEARCHES = ("grid", "optuna")
HPARAM_SEARCHES = ("joint", "per-cell")


def suggest_hparams(trial, suffix: str = "") -> dict[str, object]:
    """The searched hyperparameters; ``suffix`` names a cell, so that each cell's search is
    modelled on its own trials only (a parameter's history is its name's)."""
    return {
        "lr": trial.suggest_float(f"lr{suffix}", 1e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float(f"weight_decay{suffix}", 1e-4, 0.3, log=True),
        "adapter_init": trial.suggest_categorical(f"adapter_init{suffix}", list(ADAPTER_INITS)),
    }


class GridCells:
    """Define-by-run space of the exhaustive grid: one int ``cell`` (a plan row's index)
    that ``CellGridSampler`` walks without repeats; the row's axes are returned as
    constants, with the Optuna trial's number (``optuna_trial``), so that a resumed sweep can
    tell the study's trials Tune still knows from those its dead driver asked for and never
    saved (``release_stale_trials``)."""

    def __init__(self, plan: list[TrialSpec]) -> None:
        self.rows = [cell_config(t) for t in plan]

    def __call__(self, trial) -> dict[str, object]:
        cell = trial.suggest_int("cell", 0, len(self.rows) - 1)
        return {**self.rows[cell], "optuna_trial": trial.number}


def cell_config(t: TrialSpec) -> dict[str, object]:
    """A plan row's structural axes and encoder choice (``--encoder-train full frozen`` is
    one row each) plus ``cell_key``, the row's identity in MLflow (its trial key), kept when a
    hyperparameter search changes the run's own key."""
    return {**{k: v for k, v in t.to_config().items() if k in AXES or k in ENCODER_CONFIG},
            "cell_key": t.key}


class PerCellHparams:
    """Hyperparameters searched per cell: every plan row runs ``samples`` trials, taken
    round-robin (the row with the fewest trials so far, lowest first; trials released after
    a driver crash do not count), each with hyperparameters the sampler proposes from that
    row's earlier trials alone."""

    def __init__(self, plan: list[TrialSpec]) -> None:
        self.rows = [cell_config(t) for t in plan]

    def __call__(self, trial) -> dict[str, object]:
        counts = Counter(
            t.user_attrs["cell"] for t in trial.study.get_trials(deepcopy=False)
            if "cell" in t.user_attrs and not t.system_attrs.get(RELEASED))
        cell = min(range(len(self.rows)), key=lambda i: (counts[i], i))
        trial.set_user_attr("cell", cell)
        return {**self.rows[cell], **suggest_hparams(trial, f"|cell{cell}"),
                "optuna_trial": trial.number}


RELEASED = "lmblocks_released"


def release_stale_trials(study_path: Path, study_name: str, live: set[int]) -> list[int]:
    """After a driver crash, the study's RUNNING trials that Tune's restored experiment does
    not know (asked for, never saved) are ended FAIL and marked released, so that their
    cells are asked for again: the grid sampler would otherwise count them as running
    forever and, once the rest is done, pick at random among unfinished cells, possibly one
    that is running, twice (``CellGridSampler`` skips released trials). Returns the
    released trial numbers."""
    storage = JournalStorage(JournalFileBackend(str(study_path)))
    study = optuna.load_study(study_name=study_name, storage=storage)
    released = []
    for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        if t.number in live:
            continue
        storage.set_trial_system_attr(t._trial_id, RELEASED, True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        released.append(t.number)
    return released


GRID_ID = "lmblocks_cell"  # a trial's plan row (system attr), as GridSampler's "grid_id"
GRID_OF = "lmblocks_grid"  # which plan it is a row of: a fingerprint of the plan's cell keys


def plan_fingerprint(plan: list[TrialSpec]) -> str:
    """The plan's identity in a study's trials: its length and a hash of its cell keys."""
    digest = hashlib.sha1("\n".join(t.key for t in plan).encode()).hexdigest()[:16]
    return f"{len(plan)}:{digest}"


class CellGridSampler(BaseSampler):
    """Every plan row exactly once, as Optuna's ``GridSampler`` walks a grid, at a cost per
    trial that does not grow with the plan.

    ``GridSampler`` writes its whole grid into every trial (a system attr) and the cell is a
    categorical of n choices in every trial's params: at 20,000 cells, 20,000 copies of a
    20,000-value list in the journal and in memory (O(n^2): gigabytes), and a study that no
    longer fits. Here a trial holds its row's index (an int param of ``IntDistribution(0,
    n - 1)``) and the plan's fingerprint. The rows are handed out in order (trial number =
    row, O(1)); past the plan's length (a resumed study whose dead driver's trials were
    released: ``release_stale_trials``), a row neither finished nor running, at random, as
    GridSampler does; none left: a running one. Unlike GridSampler it never calls
    ``study.stop()``: Tune's ``num_samples`` ends the sweep there, and ``stop()`` outside
    ``optimize()`` only raises."""

    def __init__(self, n_cells: int, fingerprint: str = "", seed: int = 0) -> None:
        self.n_cells = n_cells
        self.fingerprint = fingerprint or str(n_cells)
        self._rng = random.Random(seed)

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def before_trial(self, study, trial) -> None:
        if GRID_ID in trial.system_attrs:
            return
        if trial.number < self.n_cells:
            cell = trial.number
        else:
            cell = self._rng.choice(self._unvisited(study))
        study._storage.set_trial_system_attr(trial._trial_id, GRID_ID, cell)
        study._storage.set_trial_system_attr(trial._trial_id, GRID_OF, self.fingerprint)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if param_name != "cell":
            raise ValueError(f"CellGridSampler samples the parameter 'cell' only, "
                             f"not {param_name!r}")
        return trial.system_attrs[GRID_ID]

    def _unvisited(self, study) -> list[int]:
        """Rows no trial of this plan has finished or is running (released ones do not
        count); else the rows not finished; else every row."""
        finished, running = self._taken(study)
        cells, taken = range(self.n_cells), finished | running
        return ([c for c in cells if c not in taken]
                or [c for c in cells if c not in finished] or list(cells))

    def plan_done(self, study) -> bool:
        """Every row has a trial of this plan that finished or is running: the study has no
        row left to hand out. Only past the plan's length (a resumed study) is it more than
        one count of the study's trials."""
        if study._storage.get_n_trials(study._study_id) < self.n_cells:
            return False
        finished, running = self._taken(study)
        return len(finished | running) >= self.n_cells

    def _taken(self, study) -> tuple[set[int], set[int]]:
        """The rows of this plan's trials that finished, and those running (released trials
        do not count)."""
        finished, running = set(), set()
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            attrs = t.system_attrs
            if attrs.get(GRID_OF) != self.fingerprint or attrs.get(RELEASED):
                continue
            if t.state.is_finished():
                finished.add(attrs[GRID_ID])
            elif t.state == TrialState.RUNNING:
                running.add(attrs[GRID_ID])
        return finished, running


class JournalAheadOptunaSearch(OptunaSearch):
    """Ray Tune's ``OptunaSearch``, for a study whose journal may be ahead of Tune's
    experiment snapshot.

    Tune snapshots its experiment (trial states, this searcher) every so often; Optuna's
    journal is written at every ask, report and tell. After a killed driver, ``--resume``
    restores the last snapshot, which may predate some of the journal:

    - a trial the snapshot holds as running, which the journal has already finished (it ran
      to its end after the snapshot): Tune runs it again from its checkpoint, and reporting
      to its finished Optuna trial raises ``UpdateFinishedTrialError``. Here the rerun's
      results are not told again: the journal keeps the first run's value;
    - a trial the snapshot does not hold at all, finished in the journal: Tune asks for one
      trial more than the plan has rows left. ``CellGridSampler`` would hand out a finished
      row a second time; here the search ends instead (``Searcher.FINISHED``).

    Trials the journal holds as running that the snapshot does not know are released before
    the restore (``release_stale_trials``). So Tune may keep a checkpoint or two a trial and
    snapshot on its own period, not after every trial checkpoint (``num_to_keep=1`` forces
    that: an O(trials) snapshot per epoch, O(trials^2) over a study)."""

    def suggest(self, trial_id: str):
        if (trial_id not in self._ot_trials and isinstance(self._sampler, CellGridSampler)
                and self._sampler.plan_done(self._ot_study)):
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials:  # told already: a rerun of a finished trial
            return
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:  # finished in the journal after the snapshot
            self._completed_trials.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and self._ot_study._storage.get_trial(
                ot_trial._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)  # the journal has its first run's value
            return
        super().on_trial_complete(trial_id, result, error)


def optuna_exhaustive(
    plan: list[TrialSpec], metric: str, mode: str, seed: int = 0, **study
) -> JournalAheadOptunaSearch:
    """Every plan row exactly once, driven by ``CellGridSampler``."""
    cells = GridCells(plan)
    return JournalAheadOptunaSearch(
        space=cells,
        metric=metric,
        mode=mode,
        sampler=CellGridSampler(len(plan), plan_fingerprint(plan), seed=seed),
        **study,
    )


class DefineByRunSpace:
    """The conditional space, define-by-run: a size's choices depend on the family, the
    layer selections on the size (OPT-125m has 12 layers, OPT-66b 64), the rest on the
    control. Choices come from the validated plan, so the search never leaves it.
    A class, not a closure: Tune pickles the searcher with its experiment state."""

    def __init__(self, plan: list[TrialSpec], search_hparams: bool) -> None:
        self.cells: dict = {}
        self.keys = {(t.control, t.family, t.size, t.layer_label, t.task, t.seed): t.key
                     for t in plan}
        for t in plan:
            sizes = self.cells.setdefault(t.control, {}).setdefault(t.family, {})
            labels = sizes.setdefault(t.size, [])
            if t.layer_label not in labels:
                labels.append(t.layer_label)
        self.tasks = sorted({t.task for t in plan})
        self.seeds = sorted({t.seed for t in plan})
        self.search_hparams = search_hparams

    def __call__(self, trial) -> dict[str, object]:
        control = trial.suggest_categorical("control", sorted(self.cells))
        by_family = self.cells[control]
        family = trial.suggest_categorical(f"family|{control}", sorted(by_family))
        size = trial.suggest_categorical(f"size|{control}|{family}", sorted(by_family[family]))
        labels = by_family[family][size]
        layers = trial.suggest_categorical(f"layers|{control}|{family}|{size}", labels)
        out = {"control": control, "family": family, "size": size, "layers": layers,
               "task": trial.suggest_categorical("task", self.tasks),
               "seed": trial.suggest_categorical("seed", self.seeds)}
        key = self.keys.get((control, family, size, layers, out["task"], out["seed"]))
        if key is not None:  # a combination that is a plan row
            out["cell_key"] = key
        if self.search_hparams:
            out.update(suggest_hparams(trial))
        return out


def make_searcher(
    plan: list[TrialSpec], *, search: str, sampler: str, metric: str, mode: str,
    study_path: Path | None, study_name: str, search_hparams: str | None = None,
    seed: int = 0,
) -> JournalAheadOptunaSearch:
    """The Optuna study is journaled next to the Ray results, so a resumed sweep continues it.

    ``search_hparams``: None (the spec's values), ``joint`` (with ``--search optuna``: the
    hyperparameters are more axes of the one search) or ``per-cell`` (with ``--search grid``:
    every row gets a search of its own; ``trial_count`` sets how many trials that makes)."""
    study = {"study_name": study_name}
    if study_path is not None:
        study_path.parent.mkdir(parents=True, exist_ok=True)
        study["storage"] = SweepJournalStorage(JournalFileBackend(str(study_path)))
    if search == "grid" and search_hparams == "per-cell":
        return JournalAheadOptunaSearch(space=PerCellHparams(plan), metric=metric,
                            mode=mode, sampler=SAMPLERS[sampler](seed=seed), **study)
    if search == "grid":
        return optuna_exhaustive(plan, metric, mode, seed, **study)
    return JournalAheadOptunaSearch(
        space=DefineByRunSpace(plan, search_hparams == "joint"),
        metric=metric,
        mode=mode,
        sampler=SAMPLERS[sampler](seed=seed),
        **study,
    )


def trial_count(plan: list[TrialSpec], search: str, num_samples: int | None,
                search_hparams: str | None, samples_per_cell: int) -> int:
    if search == "grid":
        return len(plan) * (samples_per_cell if search_hparams == "per-cell" else 1)
    return num_samples or len(plan)
