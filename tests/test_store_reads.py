"""Which cells a store holds, read in one SQL query on a SQL store: the same answer as
MLflow's ``search_runs``, in a fraction of the time (``orchestrator.store.trial_statuses``)."""

from __future__ import annotations

import time

import pytest

from orchestrator import store
from results import run_table


@pytest.fixture
def runs(tmp_path):
    """A store with every case: finished, failed, failed then rerun and finished, killed, a
    run known by its trial key only, a deleted run, a sweep run, another experiment's run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.open_client(uri)
    exp = store.experiment_id(client, "e")
    other = store.experiment_id(client, "other")
    t0 = int(time.time() * 1000)

    def run(key, status, *, at, kind="trial", experiment=exp, key_tag="lmblocks.cell_key"):
        tags = {"lmblocks.kind": kind, key_tag: key} if key else {"lmblocks.kind": kind}
        r = client.create_run(experiment, start_time=t0 + at, tags=tags)
        client.set_terminated(r.info.run_id, status)
        return r.info.run_id

    run("done", "FINISHED", at=0)
    run("broken", "FAILED", at=1)
    run("rerun", "FAILED", at=2)
    run("rerun", "FINISHED", at=3)
    run("fixed-then-broken", "FINISHED", at=4)
    run("fixed-then-broken", "FAILED", at=5)
    run("killed", "KILLED", at=6)
    run("by-trial-key", "FINISHED", at=7, key_tag="lmblocks.trial_key")
    client.delete_run(run("deleted", "FINISHED", at=8))
    run("sweep", "FINISHED", at=9, kind="sweep")
    run("elsewhere", "FINISHED", at=10, experiment=other)
    run(None, "FINISHED", at=11)  # a trial run with no key at all: not a cell
    return uri, client


def test_the_sql_read_answers_as_search_runs_does(runs, monkeypatch):
    _, client = runs
    fast = store.trial_statuses(client, "e")
    exp = client.get_experiment_by_name("e").experiment_id
    rows = store.run_rows(client, exp, "lmblocks.kind", "trial")

    def not_sql(*a, **k):
        raise run_table.NotSql

    monkeypatch.setattr(store, "_sql_run_rows", not_sql)
    assert fast == store.trial_statuses(client, "e")
    assert rows == store.run_rows(client, exp, "lmblocks.kind", "trial")  # times too
    assert len(rows) == 9 and rows[-1].end_time >= rows[-1].start_time
    assert fast[0] == ("by-trial-key", "FINISHED")  # newest first
    assert store.trial_statuses(client, "nowhere") == []


def test_cell_status_and_finished_cells_from_the_sql_read(runs):
    uri, _ = runs
    assert store.cell_status(uri, "e") == {
        "done": "finished", "broken": "failed", "rerun": "finished",
        "fixed-then-broken": "finished", "by-trial-key": "finished"}
    assert store.finished_cells(uri, "e") == {
        "done": 1, "rerun": 1, "fixed-then-broken": 1, "by-trial-key": 1}


def test_the_sql_read_is_used_on_a_sql_store(runs, monkeypatch):
    """Not a silent fallback: on SQLite the per-run path is never taken."""
    _, client = runs
    monkeypatch.setattr(client, "search_runs", lambda *a, **k: pytest.fail("search_runs"))
    assert len(store.trial_statuses(client, "e")) == 8


def test_experiments_open_in_mlflow_s_ui_as_model_training(tmp_path):
    """MLflow 3's UI opens an experiment without ``mlflow.experimentKind`` as a GenAI one (no
    runs table): lmblocks' experiments say they are model training, new ones at creation and
    older ones the next time a sweep opens them; a kind someone chose is kept."""
    client = store.open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    new = store.experiment_id(client, "new")
    assert client.get_experiment(new).tags[store.EXPERIMENT_KIND_TAG] == store.EXPERIMENT_KIND
    older = client.create_experiment("older")  # as an earlier lmblocks made it
    assert store.EXPERIMENT_KIND_TAG not in client.get_experiment(older).tags
    assert store.experiment_id(client, "older") == older
    assert client.get_experiment(older).tags[store.EXPERIMENT_KIND_TAG] == store.EXPERIMENT_KIND
    chosen = client.create_experiment("chosen", tags={store.EXPERIMENT_KIND_TAG: "genai_development"})
    store.experiment_id(client, "chosen")
    assert client.get_experiment(chosen).tags[store.EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_printed_link_opens_the_runs_table_of_that_experiment(tmp_path):
    """MLflow 3.17's UI opens a bare experiment link on its GenAI view in a fresh browser
    (mlflow/mlflow#24498); the link the sweep prints names the Model-training runs view."""
    from orchestrator.cli import _browse

    assert store.runs_page("sqlite:///x.db", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert store.runs_page("http://mlflow.lab:5000/", "7").startswith(
        "http://mlflow.lab:5000/#/experiments/7/runs?")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.open_client(uri)
    client.create_experiment("first")
    second = store.experiment_id(client, "second")
    line = _browse(uri, "second")
    assert line.startswith(f"mlflow ui --backend-store-uri {uri}, then open ")
    assert line.endswith(f"/#/experiments/{second}/runs?workflowType=machine_learning")
