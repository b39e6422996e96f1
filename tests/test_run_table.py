"""The report's run table read from a SQL store in four queries: the very frame
``mlflow.search_runs`` returns (values, missing values, dtypes, order), more than ten times
sooner (``results.run_table``; figures in ``bench/scale.py``)."""

from __future__ import annotations

import math
import time

import mlflow
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from results import run_table


@pytest.fixture
def store(tmp_path):
    """Runs with every shape: several steps of a metric (the latest counts), a NaN metric,
    params and tags some runs lack, a run still RUNNING (no end time), a deleted run, a
    sweep run, another experiment's run, two runs started in the same millisecond."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    other = client.create_experiment("other")
    parent = client.create_run(exp, tags={"lmblocks.kind": "sweep"}).info.run_id
    t0 = int(time.time() * 1000)

    def run(at, *, experiment=exp, metrics=(), params=(), tags=(), end=True):
        r = client.create_run(experiment, start_time=t0 + at, tags={
            "lmblocks.kind": "trial", "mlflow.parentRunId": parent, **dict(tags)})
        client.log_batch(r.info.run_id,
                         metrics=[Metric(k, v, t0 + at + s, s) for k, v, s in metrics],
                         params=[Param(k, v) for k, v in params],
                         tags=[RunTag("lmblocks.trial_key", f"k{at}")])
        if end:
            client.set_terminated(r.info.run_id, "FINISHED" if at % 2 else "FAILED")
        return r.info.run_id

    run(0, metrics=[("val_acc", 0.5, 1), ("val_acc", 0.7, 2)],
        params=[("family", "opt"), ("lr", "0.001")])
    run(1, metrics=[("val_acc", float("nan"), 1), ("loss", 1.5, 1)], params=[("family", "llama")],
        tags=[("failure.kind", "non-finite-loss")])
    run(2, params=[("seed", "0")], end=False)
    run(2, metrics=[("val_acc", 0.9, 1)])  # the same start time as the run before
    client.delete_run(run(3, params=[("family", "gone")]))
    run(4, experiment=other, params=[("family", "elsewhere")])
    return client, exp, parent


@pytest.mark.parametrize("by_parent", [False, True])
def test_the_sql_frame_is_search_runs_frame(store, by_parent):
    client, exp, parent = store
    tag, value = ("mlflow.parentRunId", parent) if by_parent else ("lmblocks.kind", "trial")
    fast = run_table.search_runs_frame(client, exp, tag, value)
    mlflow.set_tracking_uri(client.tracking_uri)
    slow = mlflow.search_runs([exp], f"tags.`{tag}` = '{value}'", output_format="pandas")
    assert len(fast) == 4 and fast["metrics.val_acc"].isna().sum() == 2  # NaN, and none
    assert fast["metrics.loss"].notna().sum() == 1
    assert fast["metrics.val_acc"].max() == 0.9 and 0.7 in set(fast["metrics.val_acc"])
    assert "gone" not in set(fast["params.family"]) and fast["end_time"].isna().sum() == 1
    pd.testing.assert_frame_equal(fast[sorted(fast.columns)], slow[sorted(slow.columns)])


def test_a_sql_store_is_read_with_sql_and_any_other_with_search_runs(store, monkeypatch):
    client, exp, _ = store
    real = mlflow.search_runs
    monkeypatch.setattr(mlflow, "search_runs", lambda *a, **k: pytest.fail("search_runs"))
    fast = run_table.search_runs_frame(client, exp, "lmblocks.kind", "trial")

    def not_sql(*a, **k):
        raise run_table.NotSql

    monkeypatch.setattr(mlflow, "search_runs", real)
    monkeypatch.setattr(run_table, "_sql_frame", not_sql)
    slow = run_table.search_runs_frame(client, exp, "lmblocks.kind", "trial")
    pd.testing.assert_frame_equal(fast[sorted(fast.columns)], slow[sorted(slow.columns)])


def test_metric_histories_in_bulk_are_get_metric_history_run_by_run(store, monkeypatch):
    """Step order, the last value logged at a step winning (a retried epoch), NaN kept, an
    empty history for a run without the metric; the same as one call per run."""
    client, exp, _ = store
    runs = client.search_runs([exp], "tags.`lmblocks.kind` = 'trial'")
    retried = runs[-1].info.run_id  # the first run: val_acc at steps 1 and 2
    client.log_metric(retried, "val_acc", 0.65, step=2, timestamp=int(time.time() * 1000) + 10**6)
    client.log_metric(retried, "val_acc", 0.3, step=0)
    ids = [r.info.run_id for r in runs]
    monkeypatch.setattr(run_table, "CHUNK", 2)  # several queries
    fast = run_table.metric_histories(client, ids, "val_acc")
    assert fast[retried] == [0.3, 0.5, 0.65]
    assert sum(h == [] for h in fast.values()) == 1  # the run with no val_acc
    assert any(len(h) == 1 and h[0] != h[0] for h in fast.values())  # the NaN

    def not_sql(*a, **k):
        raise run_table.NotSql

    monkeypatch.setattr(run_table, "_sql_metric_points", not_sql)
    slow = run_table.metric_histories(client, ids, "val_acc")

    def same(a, b):  # NaN equal to NaN
        return len(a) == len(b) and all(
            x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))

    assert fast.keys() == slow.keys() and all(same(fast[k], slow[k]) for k in fast)


def test_a_run_whose_driver_died_before_it_logged_its_config_is_in_no_cell():
    """A trial run created, then its driver killed before the run's params were written:
    it names no cell (``--resume`` runs that cell again under a run of its own)."""
    import pandas as pd

    from results.runs import tidy

    cell = {"params.family": "minilm", "params.size": "l6", "params.layers": "5",
            "params.task": "digits", "params.control": "pretrained"}
    raw = pd.DataFrame([
        {**cell, "params.seed": "0", "status": "FINISHED", "run_id": "a",
         "metrics.val_acc": 0.9},
        {**{k: None for k in cell}, "params.seed": None, "status": "KILLED", "run_id": "b",
         "metrics.val_acc": None},
    ])
    df = tidy(raw, "e")
    assert list(df["run_id"]) == ["a"] and list(df["seed"]) == [0]
    assert list(df["position"]) == ["end"]  # logged before the position axis: the end
