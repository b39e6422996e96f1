"""What an MLflow store already holds of a sweep: which cells finished or failed, read
without Ray or torch (``--dry-run`` reads it in a second), and the store opened safely for
the sweep's writes (``open_client``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

# MLflow 3's UI guesses an experiment's kind when it has none (a sweep's experiment looked like
# a GenAI one: traces, "No data available"); this kind says it is model training, and in the
# UI's Model-training view (below) the experiment opens on its runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


# MLflow 3.17's UI keeps its "GenAI / Model training" switch in the browser (localStorage,
# GenAI by default) and does not follow the experiment's kind (mlflow/mlflow#24498): a bare
# link to the experiment opens the GenAI overview in a fresh browser. The URL parameter wins.
UI_PORT = 5000  # `mlflow ui`'s default
VIEW = "?workflowType=machine_learning"  # any page of the UI: its "Model training" view
RUNS_VIEW = f"runs{VIEW}"


def runs_page(tracking_uri: str, experiment: str) -> str:
    """The experiment's runs table in MLflow's UI: the tracking server itself for an http(s)
    store, else ``mlflow ui`` on its default address."""
    base = (tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://"))
            else f"http://127.0.0.1:{UI_PORT}")
    return f"{base}/#/experiments/{experiment}/{RUNS_VIEW}"


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment ``name``, created when missing; either way tagged as model training
    (``EXPERIMENT_KIND``) unless it already says what kind it is."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(
            name, artifact_location=artifact_location(client.tracking_uri, name),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in exp.tags:  # made before lmblocks tagged, or by hand
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (relative to the working dir)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return db if db.is_absolute() else Path.cwd() / db


class TrackingStoreError(RuntimeError):
    """The tracking store cannot be opened; the message names it and what to do."""


def open_client(tracking_uri: str) -> MlflowClient:
    """A client whose store is ready. MLflow creates (and migrates) a SQLite store's schema on
    first use, and two sweeps started at once on a new ``mlflow.db`` race through alembic's
    migrations: one dies, and the half-migrated file then fails every later sweep. So the
    first use happens under an exclusive lock on ``<db>.lock`` beside the database, and a
    database this call created but could not finish is removed, never left behind."""
    db = sqlite_path(tracking_uri)
    if db is None:  # a server or another store: it serialises its own schema
        return _ready(MlflowClient(tracking_uri), tracking_uri)
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            existed = db.exists() and db.stat().st_size > 0
            try:
                return _ready(MlflowClient(tracking_uri), tracking_uri)
            except TrackingStoreError:
                if not existed:
                    db.unlink(missing_ok=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ready(client: MlflowClient, tracking_uri: str) -> MlflowClient:
    from alembic.util.exc import CommandError
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        client.search_experiments(max_results=1)  # creates or migrates the schema
    except (MlflowException, SQLAlchemyError, CommandError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingStoreError(
            f"cannot open the MLflow store {tracking_uri!r}: {first[:200]}; check the URI "
            "(a server must be reachable), or move a damaged database aside") from None
    return client


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a SQLite store, artifacts next to the database (``mlruns/`` beside ``mlflow.db``),
    not in whatever directory the sweep was started from (MLflow's default, ``./mlruns``);
    a tracking server decides for itself."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (db.parent / "mlruns" / safe).as_uri()


TRIAL_RUNS = "tags.`lmblocks.kind` = 'trial'"


def trial_runs(client: MlflowClient, experiment: str, where: str = "") -> list:
    """The experiment's trial runs (``where``: more of a filter), newest first; none when the
    experiment does not exist."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=TRIAL_RUNS + where,
                              order_by=["attributes.start_time DESC"], max_results=50_000)


def cell_key(run) -> str | None:
    return run.data.tags.get("lmblocks.cell_key") or run.data.tags.get("lmblocks.trial_key")


@dataclass(frozen=True)
class RunRow:
    """What the driver reads of a run after a sweep, or of a store before one."""

    run_id: str
    status: str
    start_time: int  # ms
    end_time: int | None
    cell_key: str | None  # which plan row it ran
    trial_key: str | None  # its full config (a per-cell search's own hyperparameters)

    @property
    def key(self) -> str | None:
        """The cell it counts for (runs from before cell keys: their trial key)."""
        return self.cell_key or self.trial_key


def run_rows(client: MlflowClient, experiment_id: str, tag: str, value: str) -> list[RunRow]:
    """The experiment's active runs whose tag ``tag`` is ``value``, newest first.

    ``search_runs`` builds every run whole (its params, metrics and tags as ORM objects and
    entities): about 2 ms a run, 40 s for a study of 20,000 cells, to read a few values of
    each, and a sweep reads its runs so four times (orphans, failures, summary, dry run).
    On a SQL store (SQLite, PostgreSQL, MySQL) the values are one query through MLflow's own
    store and table models (~0.1 s at 20,000). Any other store (a tracking server), or a
    store whose models differ from the ones this was written for, is read with
    ``search_runs`` (``tests/test_store_reads.py`` checks both give the same)."""
    from results.run_table import NotSql

    try:
        return _sql_run_rows(client, experiment_id, tag, value)
    except NotSql:
        pass
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                              order_by=["attributes.start_time DESC"], max_results=50_000)
    return [RunRow(r.info.run_id, r.info.status, r.info.start_time, r.info.end_time,
                   r.data.tags.get("lmblocks.cell_key"), r.data.tags.get("lmblocks.trial_key"))
            for r in runs]


def trial_statuses(client: MlflowClient, experiment: str) -> list[tuple[str, str]]:
    """(cell key, status) of the experiment's trial runs, newest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [(r.key, r.status) for r in run_rows(client, exp.experiment_id, "lmblocks.kind",
                                                 "trial") if r.key]


def _sql_run_rows(client: MlflowClient, experiment_id: str, tag: str,
                  value: str) -> list[RunRow]:
    from results.run_table import NotSql, sql_store

    try:
        from mlflow.entities import LifecycleStage
        from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
        from sqlalchemy import and_, select
        from sqlalchemy.orm import aliased
    except ImportError as e:
        raise NotSql from e
    store = sql_store(client)
    chosen, cell, trial = aliased(SqlTag), aliased(SqlTag), aliased(SqlTag)
    try:
        query = (
            select(SqlRun.run_uuid, SqlRun.status, SqlRun.start_time, SqlRun.end_time,
                   cell.value, trial.value)
            .join(chosen, and_(chosen.run_uuid == SqlRun.run_uuid,
                               chosen.key == tag, chosen.value == value))
            .outerjoin(cell, and_(cell.run_uuid == SqlRun.run_uuid,
                                  cell.key == "lmblocks.cell_key"))
            .outerjoin(trial, and_(trial.run_uuid == SqlRun.run_uuid,
                                   trial.key == "lmblocks.trial_key"))
            .where(SqlRun.experiment_id == int(experiment_id),
                   SqlRun.lifecycle_stage == LifecycleStage.ACTIVE)
            .order_by(SqlRun.start_time.desc(), SqlRun.run_uuid)
        )
        with store.ManagedSessionMaker() as session:  # Core rows: no ORM object per run
            rows = session.connection().execute(query).all()
    except AttributeError as e:  # MLflow's models changed: the slow, public way
        raise NotSql from e
    return [RunRow(*row) for row in rows]


def finished_cells(tracking_uri: str, experiment: str) -> Counter[str]:
    """FINISHED runs per cell key in the experiment: cells that need not run again.

    A cell is a plan row; its key is the row's full-config key, which is also the run's own
    key unless a hyperparameter search changed the run's hyperparameters. A SQLite database
    that does not exist yet holds none: it is not created here (creating MLflow's schema
    takes seconds, and the sweep creates it when it starts its parent run)."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return Counter()
    return Counter(key for key, status in trial_statuses(open_client(tracking_uri), experiment)
                   if status == "FINISHED")


def cell_status(tracking_uri: str, experiment: str) -> dict[str, str]:
    """Per cell key (as ``finished_cells``): "finished" when a run of it FINISHED, "failed"
    when its latest run FAILED and none finished; cells with neither are absent (new).

    Read-only, for ``--dry-run``: a local store that does not exist (or an empty SQLite file)
    holds none and is neither created nor given a schema; an existing one is read with a
    plain client (no lock file beside it). MLflow's errors are raised as they come."""
    from results.stores import local_store_path

    path = local_store_path(tracking_uri)
    if path is not None and (not path.exists() or (path.is_file() and path.stat().st_size == 0)):
        return {}
    status: dict[str, str] = {}
    for key, run_status in trial_statuses(MlflowClient(tracking_uri), experiment):
        if run_status == "FINISHED":  # newest first
            status[key] = "finished"
        else:  # the latest run that did not finish says whether the cell failed
            status.setdefault(key, run_status)
    return {k: v.lower() for k, v in status.items() if v in ("finished", "FAILED")}
