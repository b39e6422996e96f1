"""An experiment's runs as the frame ``mlflow.search_runs`` returns, read from a SQL store in
four queries; and a metric's history of many runs at once.

``mlflow.search_runs`` builds every run whole (ORM objects, then entities, then a frame row
by row, converting each run's times one at a time): about 2 ms a run, 40 s for a study of
20,000 cells, before the report has done anything (``bench/scale.py``). On a SQL store
(SQLite, PostgreSQL, MySQL) the same frame comes from the runs, params, tags and latest
metrics tables, read through MLflow's own store and table models, and pivoted by pandas.
Any other store (a tracking server), or a store whose models differ from the ones this was
written for, is read with ``mlflow.search_runs``; ``tests/test_run_table.py`` checks that
both give the same frame.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient


def search_runs_frame(client: MlflowClient, experiment_id: str, tag: str,
                      value: str) -> pd.DataFrame:
    """The experiment's active runs whose tag ``tag`` is ``value``, newest first, as
    ``mlflow.search_runs(output_format="pandas")`` frames them."""
    try:
        return _sql_frame(client, experiment_id, tag, value)
    except NotSql:
        pass
    mlflow.set_tracking_uri(client.tracking_uri)
    return mlflow.search_runs(experiment_ids=[experiment_id],
                              filter_string=f"tags.`{tag}` = '{value}'",
                              output_format="pandas", max_results=100_000)


class NotSql(Exception):
    """The store cannot be read with SQL queries: read it with MLflow's public calls."""


def sql_store(client: MlflowClient):
    """MLflow's SQL store behind the client, whose session and table models the SQL reads
    use; ``NotSql`` for any other store (a tracking server) or another MLflow layout."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError as e:
        raise NotSql from e
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if not isinstance(store, SqlAlchemyStore):
        raise NotSql
    return store


def _sql_frame(client: MlflowClient, experiment_id: str, tag: str, value: str) -> pd.DataFrame:
    try:
        from mlflow.entities import LifecycleStage
        from mlflow.store.tracking.dbmodels.models import (
            SqlLatestMetric,
            SqlParam,
            SqlRun,
            SqlTag,
        )
        from sqlalchemy import select
    except ImportError as e:
        raise NotSql from e
    store = sql_store(client)
    try:
        chosen = (select(SqlTag.run_uuid).join(SqlRun, SqlRun.run_uuid == SqlTag.run_uuid)
                  .where(SqlTag.key == tag, SqlTag.value == value,
                         SqlRun.experiment_id == int(experiment_id),
                         SqlRun.lifecycle_stage == LifecycleStage.ACTIVE))
        queries = {
            "runs": select(SqlRun.run_uuid, SqlRun.experiment_id, SqlRun.status,
                           SqlRun.artifact_uri, SqlRun.start_time, SqlRun.end_time)
            .where(SqlRun.run_uuid.in_(chosen))
            .order_by(SqlRun.start_time.desc(), SqlRun.run_uuid),
            "metrics": select(SqlLatestMetric.run_uuid, SqlLatestMetric.key,
                              SqlLatestMetric.value, SqlLatestMetric.is_nan)
            .where(SqlLatestMetric.run_uuid.in_(chosen)),
            "params": select(SqlParam.run_uuid, SqlParam.key, SqlParam.value)
            .where(SqlParam.run_uuid.in_(chosen)),
            "tags": select(SqlTag.run_uuid, SqlTag.key, SqlTag.value)
            .where(SqlTag.run_uuid.in_(chosen)),
        }
        with store.ManagedSessionMaker() as session:
            connection = session.connection()  # Core rows as plain tuples: no ORM per row
            read = {name: pd.DataFrame([tuple(row) for row in connection.execute(q)],
                                       columns=[c.name for c in q.selected_columns])
                    for name, q in queries.items()}
    except AttributeError as e:  # MLflow's models changed: the slow, public way
        raise NotSql from e
    runs = read["runs"]
    # built as search_runs builds it (a dict of lists, pandas inferring each column's type),
    # so that the two frames are equal, dtypes included
    data: dict[str, object] = {
        "run_id": runs["run_uuid"].tolist(),
        "experiment_id": runs["experiment_id"].astype(str).tolist(),
        "status": runs["status"].tolist(),
        "artifact_uri": runs["artifact_uri"].tolist(),
        "start_time": list(pd.to_datetime(runs["start_time"], unit="ms", utc=True)),
        "end_time": list(pd.to_datetime(runs["end_time"], unit="ms", utc=True)),
    }
    metrics = read["metrics"]
    metrics["value"] = metrics["value"].where(~metrics["is_nan"].astype(bool), float("nan"))
    for name, table, missing in (("metrics", metrics, float("nan")),
                                 ("params", read["params"], None),
                                 ("tags", read["tags"], None)):
        wide = table.pivot(index="run_uuid", columns="key", values="value")
        wide = wide.reindex(runs["run_uuid"]).astype(object)
        for key in wide.columns:
            data[f"{name}.{key}"] = [missing if pd.isna(v) else v for v in wide[key]]
    return pd.DataFrame(data)


def metric_histories(client: MlflowClient, run_ids: list[str],
                     metric: str) -> dict[str, list[float]]:
    """Per run, the metric's values in step order, the last one logged at a step winning (a
    retried epoch), as ``get_metric_history`` gives them run by run. That is one call per
    run: 5-10 ms each, minutes at 20,000 runs; on a SQL store it is one query per 500 runs.
    A run with no such metric has an empty history; a run MLflow cannot read, none."""
    try:
        points = _sql_metric_points(client, run_ids, metric)
    except NotSql:
        from mlflow.exceptions import MlflowException

        points = {}
        for run_id in run_ids:
            try:
                history = client.get_metric_history(run_id, metric)
            except MlflowException:
                continue
            points[run_id] = [(m.step, m.timestamp, m.value) for m in history]
    out: dict[str, list[float]] = {}
    for run_id, logged in points.items():
        by_step = {step: value for step, _, value in sorted(logged, key=lambda p: p[:2])}
        out[run_id] = [by_step[s] for s in sorted(by_step)]
    return out


CHUNK = 500  # run ids per query: well under any SQL engine's limit on bound parameters


def _sql_metric_points(client: MlflowClient, run_ids: list[str],
                       metric: str) -> dict[str, list[tuple[int, int, float]]]:
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from sqlalchemy import select
    except ImportError as e:
        raise NotSql from e
    store = sql_store(client)
    out: dict[str, list[tuple[int, int, float]]] = {run_id: [] for run_id in run_ids}
    try:
        with store.ManagedSessionMaker() as session:
            connection = session.connection()
            for i in range(0, len(run_ids), CHUNK):
                query = (select(SqlMetric.run_uuid, SqlMetric.step, SqlMetric.timestamp,
                                SqlMetric.value, SqlMetric.is_nan)
                         .where(SqlMetric.key == metric,
                                SqlMetric.run_uuid.in_(run_ids[i:i + CHUNK])))
                for run_id, step, ts, value, is_nan in connection.execute(query):
                    out.setdefault(run_id, []).append(
                        (step, ts, float("nan") if is_nan else value))
    except AttributeError as e:  # MLflow's models changed: the slow, public way
        raise NotSql from e
    return out
