"""The Optuna search spaces, driven by a real in-memory study (no Ray): what each asks for."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest

from encoders.lm.block_options import ADAPTER_INITS
from orchestrator.plan import build_plan
from orchestrator.search import (
    CellGridSampler,
    DefineByRunSpace,
    GridCells,
    PerCellHparams,
    plan_fingerprint,
    trial_count,
)
from orchestrator.spec import load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def drive(space, n: int, sampler, objective) -> list[dict]:
    """What OptunaSearch does with a define-by-run space: the space runs on each trial."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    configs: list[dict] = []

    def run(trial):
        configs.append(space(trial))
        return objective(configs[-1])

    study.optimize(run, n_trials=n)
    return configs


@pytest.fixture
def plan():
    return build_plan(load_spec("smoke").replace(seeds=(0, 1)))


def test_grid_walks_every_row_once_with_its_key(plan):
    cells = GridCells(plan)
    grid = CellGridSampler(len(plan), plan_fingerprint(plan), seed=0)
    configs = drive(cells, len(plan), grid, lambda c: 0.5)
    assert sorted(c["cell_key"] for c in configs) == sorted(t.key for t in plan)


def test_grid_trials_stay_small_however_long_the_plan():
    """Optuna's GridSampler wrote the whole grid into every trial (O(n^2) in the journal and
    in memory at 20,000 cells); a trial of CellGridSampler holds its row and the plan's
    fingerprint, whatever the plan's length."""
    sizes = {}
    for n in (10, 2000):
        study = optuna.create_study(sampler=CellGridSampler(n, f"{n}:x", seed=0))
        for _ in range(5):
            trial = study.ask()
            trial.suggest_int("cell", 0, n - 1)
            study.tell(trial, 0.5)
        frozen = study.trials[-1]
        assert frozen.params == {"cell": 4}
        sizes[n] = len(repr((frozen.system_attrs, frozen.distributions)))
    assert sizes[2000] - sizes[10] < 10  # the digits of n, not n values


def test_grid_past_the_plan_hands_out_unfinished_rows_only():
    study = optuna.create_study(sampler=CellGridSampler(3, "3:x", seed=0))
    for value in (0.1, 0.2, 0.3):
        trial = study.ask()
        trial.suggest_int("cell", 0, 2)
        study.tell(trial, value)
    other = study.ask()  # a fourth trial: every row finished, so any row (the grid is used up)
    assert 0 <= other.suggest_int("cell", 0, 2) <= 2
    assert plan_fingerprint(build_plan(load_spec("smoke"))) != plan_fingerprint(
        build_plan(load_spec("smoke").replace(seeds=(0, 1))))


def test_per_cell_search_gives_each_row_its_own_trials_and_history(plan):
    k = 3
    space = PerCellHparams(plan)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    configs = []
    for _ in range(trial_count(plan, "grid", None, "per-cell", k)):
        trial = study.ask()
        configs.append(space(trial))
        study.tell(trial, configs[-1]["lr"])
    assert Counter(c["cell_key"] for c in configs) == {t.key: k for t in plan}
    for c in configs:
        assert 1e-4 <= c["lr"] <= 1e-2 and 1e-4 <= c["weight_decay"] <= 0.3
        assert c["adapter_init"] in ADAPTER_INITS
    # each cell's parameters are its own: a trial holds exactly one cell's names
    for t in study.trials:
        cells = {name.split("|")[1] for name in t.params}
        assert len(cells) == 1
    assert {c["adapter_init"] for c in configs} == set(ADAPTER_INITS)  # explored


def test_joint_space_stays_inside_the_plan_and_conditions_layers_on_size():
    plan = build_plan(load_spec("smoke").replace(layers=("all",), controls=("pretrained", "none")))
    space = DefineByRunSpace(plan, search_hparams=True)
    configs = drive(space, 30, optuna.samplers.RandomSampler(seed=1), lambda c: c["lr"])
    rows = {(t.control, t.family, t.size, t.layer_label) for t in plan}
    for c in configs:
        assert (c["control"], c["family"], c["size"], c["layers"]) in rows
        assert c["cell_key"] in {t.key for t in plan}
        assert "adapter_init" in c and "lr" in c
    assert {c["layers"] for c in configs if c["control"] == "pretrained"} == {str(i) for i in range(6)}


def test_trial_count():
    plan = list(range(5))
    assert trial_count(plan, "grid", None, None, 4) == 5
    assert trial_count(plan, "grid", None, "per-cell", 4) == 20
    assert trial_count(plan, "optuna", 7, "joint", 4) == 7
    assert trial_count(plan, "optuna", None, None, 4) == 5


@pytest.mark.parametrize("seed", range(5))
def test_resume_releases_cells_a_dead_driver_asked_for(tmp_path, seed, plan):
    """The driver died after asking for a cell and before Tune saved it: that cell must be
    asked for again, and no cell twice (GridSampler alone picks at random among the cells
    it thinks are running once the others are done)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from orchestrator.search import CellGridSampler, release_stale_trials

    rows = plan[:3]
    cells = GridCells(rows)
    journal = tmp_path / "optuna.journal"

    def study():
        return optuna.create_study(
            study_name="s", load_if_exists=True, direction="maximize",
            storage=JournalStorage(JournalFileBackend(str(journal))),
            sampler=CellGridSampler(3, "3:rows", seed=seed))

    before = study()
    done, stale = before.ask(), before.ask()
    first = cells(done)
    before.tell(done, 0.5)
    stale_cell = cells(stale)["cell_key"]  # asked, never saved by Tune: the driver died

    assert release_stale_trials(journal, "s", live={done.number}) == [stale.number]
    after = study()
    running = after.ask()
    seen = [first["cell_key"], cells(running)["cell_key"]]
    last = after.ask()  # one cell left: it must be the released one, not the running one
    seen.append(cells(last)["cell_key"])
    assert sorted(seen) == sorted(t.key for t in rows)
    assert stale_cell == seen[-1] or stale_cell == seen[1]


def test_a_resumed_search_tolerates_a_journal_ahead_of_tune_s_snapshot(tmp_path, plan):
    """Tune snapshots the searcher every so often; the journal is written at every ask and
    tell. After a killed driver the restored searcher is behind the journal: a trial it holds
    as running finished (Tune runs it again: its results must not be told twice, which
    raised UpdateFinishedTrialError), a trial it never saw finished (its row must not be
    handed out again: the search ends instead), a trial it never saw was running (released:
    its row is handed out again)."""
    from ray.tune.search import Searcher

    from orchestrator.search import make_searcher, release_stale_trials

    rows = plan[:4]
    journal = tmp_path / "optuna.journal"

    def searcher():
        return make_searcher(rows, search="grid", sampler="tpe", metric="val_acc",
                             mode="max", study_path=journal, study_name="s")

    live = searcher()
    keys = {tid: live.suggest(tid)["cell_key"] for tid in ("t0", "t1")}
    live.on_trial_result("t0", {"val_acc": 0.5, "training_iteration": 1})
    live.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot before the crash
    for tid, value in (("t0", 0.6), ("t1", 0.7)):  # both finish after it
        live.on_trial_result(tid, {"val_acc": value, "training_iteration": 2})
        live.on_trial_complete(tid, {"val_acc": value, "training_iteration": 2})
    keys["t2"] = live.suggest("t2")["cell_key"]  # never in a snapshot, finished
    live.on_trial_complete("t2", {"val_acc": 0.8, "training_iteration": 1})
    released_key = live.suggest("t3")["cell_key"]  # never in a snapshot, running at the crash

    resumed = searcher()
    resumed.restore(str(tmp_path / "snapshot.pkl"))
    assert release_stale_trials(journal, "s", live={0, 1}) == [3]
    for tid in ("t0", "t1"):  # Tune reruns them from their checkpoints
        resumed.on_trial_result(tid, {"val_acc": 0.1, "training_iteration": 2})
        resumed.on_trial_complete(tid, {"val_acc": 0.1, "training_iteration": 2})
    again = resumed.suggest("t4")
    assert again["cell_key"] == released_key
    assert resumed.suggest("t5") == Searcher.FINISHED  # every row is done or running
    values = {t.number: t.value for t in resumed._ot_study.get_trials()
              if t.state == optuna.trial.TrialState.COMPLETE}
    assert values == {0: 0.6, 1: 0.7, 2: 0.8}  # the first runs' values, not the reruns'
    assert sorted([*keys.values(), again["cell_key"]]) == sorted(t.key for t in rows)


def _journal_answers(storage, study_id: int) -> tuple[int, list[int]]:
    return (storage.get_n_trials(study_id),
            [t.number for t in storage.get_all_trials(
                study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,))])


def test_the_sweep_s_journal_answers_the_ask_s_questions_as_optuna_s_does(tmp_path):
    """``SweepJournalStorage`` keeps the study's trial count and its waiting trials instead
    of walking every trial at every ask: it must give the answers a plain ``JournalStorage``
    reading the same journal gives, through enqueued trials popped by asks, trials told,
    a trial set back to WAITING, and a pickling (Tune's snapshot of the searcher)."""
    import pickle

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from orchestrator.study_journal import SweepJournalStorage

    journal = str(tmp_path / "optuna.journal")
    storage = SweepJournalStorage(JournalFileBackend(journal))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    sid = study._study_id

    def check(where: str, store=storage) -> tuple[int, list[int]]:
        plain = JournalStorage(JournalFileBackend(journal))
        got, want = _journal_answers(store, sid), _journal_answers(plain, sid)
        assert got == want, where
        return got

    assert check("empty") == (0, [])
    for i in range(3):
        study.tell(study.ask(), float(i))
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 2.0})
    assert check("two enqueued") == (5, [3, 4])
    popped = study.ask()  # takes the first waiting trial
    assert popped.number == 3
    assert check("one popped") == (5, [4])
    study.tell(popped, 1.0)
    running = study.ask()
    assert running.number == 4
    fresh = study.ask()  # none waiting: a new trial
    assert check("none waiting") == (6, [])
    storage.set_trial_state_values(fresh._trial_id, optuna.trial.TrialState.WAITING)
    assert check("set back to WAITING") == (6, [5])
    study.enqueue_trial({"x": 3.0})
    restored = pickle.loads(pickle.dumps(storage))  # Tune's snapshot, --resume
    assert check("unpickled", restored) == (7, [5, 6])
    study.tell(running, 2.0)
    assert check("after a tell") == (7, [5, 6])


def test_an_ask_does_not_walk_every_trial_of_the_study(tmp_path, monkeypatch):
    """The grid search's ask (``make_searcher``'s study, on the sweep's journal) must not
    walk the study's trials: Optuna's ``JournalStorage`` did, twice an ask (the waiting
    trials, the trial count), so the driver's cost a trial grew with the study. Counted by
    the journal's own walk, which a plain ``JournalStorage`` makes at every ask."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._storage import JournalStorageReplayResult

    from orchestrator.search import make_searcher

    plan = build_plan(load_spec("smoke").replace(seeds=tuple(range(4))))  # 16 rows
    walks = []
    walk = JournalStorageReplayResult.get_all_trials
    monkeypatch.setattr(JournalStorageReplayResult, "get_all_trials",
                        lambda self, *a, **k: walks.append(1) or walk(self, *a, **k))
    searcher = make_searcher(plan, search="grid", sampler="tpe", metric="val_acc",
                             mode="max", study_path=tmp_path / "optuna.journal",
                             study_name="s")
    for i in range(5):  # the first ask builds the index: one walk
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5})
    walks.clear()
    keys = [searcher.suggest(f"t{i}")["cell_key"] for i in range(5, 12)]
    for i in range(5, 12):
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5})
    assert walks == []
    assert keys == [t.key for t in plan[5:12]]

    plain = optuna.create_study(study_name="p", direction="maximize",
                                storage=JournalStorage(JournalFileBackend(
                                    str(tmp_path / "plain.journal"))))
    plain.ask()
    walks.clear()
    plain.ask()
    assert walks  # what the count above would see on Optuna's own storage
