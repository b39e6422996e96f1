"""What an MLflow store already holds of a sweep: which cells finished or failed, read
without Ray or torch (``--dry-run`` reads it in a second), and the store opened safely for
the sweep's writes (``open_client``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))


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


def finished_cells(tracking_uri: str, experiment: str) -> Counter[str]:
    """FINISHED runs per cell key in the experiment: cells that need not run again.

    A cell is a plan row; its key is the row's full-config key, which is also the run's own
    key unless a hyperparameter search changed the run's hyperparameters. A SQLite database
    that does not exist yet holds none: it is not created here (creating MLflow's schema
    takes seconds, and the sweep creates it when it starts its parent run)."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return Counter()
    runs = trial_runs(open_client(tracking_uri), experiment,
                       " AND attributes.status = 'FINISHED'")
    return Counter(k for k in map(cell_key, runs) if k)


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
    for run in trial_runs(MlflowClient(tracking_uri), experiment):  # newest first
        if key := cell_key(run):
            if run.info.status == "FINISHED":
                status[key] = "finished"
            else:  # the latest run that did not finish says whether the cell failed
                status.setdefault(key, run.info.status)
    return {k: v.lower() for k, v in status.items() if v in ("finished", "FAILED")}
