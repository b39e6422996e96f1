"""Which MLflow store a command uses, read without importing MLflow: ``--tracking-uri``, then
``MLFLOW_TRACKING_URI``, then SQLite in the working directory; and, for read-only commands,
a local store that does not exist is an error rather than an empty database created there.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname


class ReportError(RuntimeError):
    """Bad report input; the message names the bad value and the valid choices."""


def default_tracking_uri() -> str:
    """SQLite in the working directory, by absolute path (Ray trials run in other dirs): where
    a sweep writes and a report reads unless told otherwise."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


TRACKING_ENV = "MLFLOW_TRACKING_URI"


def tracking_uri_and_source(flag: str | None) -> tuple[str, str]:
    """The store a command uses and what named it: ``--tracking-uri``, then the environment's
    ``MLFLOW_TRACKING_URI`` (MLflow's own convention), then the local SQLite default."""
    if flag:
        return flag, "--tracking-uri"
    if env := os.environ.get(TRACKING_ENV, "").strip():
        return env, TRACKING_ENV
    return default_tracking_uri(), "default"


def resolve_tracking_uri(flag: str | None) -> str:
    return tracking_uri_and_source(flag)[0]


def local_store_path(uri: str) -> Path | None:
    """The file (SQLite) or folder (file store) holding a local store; None for a server or
    an in-memory database."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme.split("+", 1)[0] == "sqlite":
        path = rest[1:].split("?", 1)[0] if rest.startswith("/") else ""
        if not path or path == ":memory:":
            return None
        return Path(path) if Path(path).is_absolute() else Path.cwd() / path
    if uri.startswith("file:"):
        return Path(url2pathname(urlparse(uri).path))
    if not sep:  # a plain path: MLflow's file store
        return Path(uri).resolve()
    return None


def require_store(uri: str) -> None:
    """For read-only commands: a local store that does not exist is an error, never created
    (opening a missing SQLite file through MLflow creates an empty database there)."""
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise ReportError(f"no MLflow store at {uri} ({path} does not exist): no sweep has been "
                          f"recorded there; valid: the store a sweep wrote (--tracking-uri or "
                          f"{TRACKING_ENV})")
