"""The sweep's console: its own lines only, unless ``-v`` asks for the libraries' too.

By default the terminal shows the progress line, then the findings, the tables, failed
trials (one line each) and where everything is. What Ray, Optuna and MLflow log at INFO
(Ray's "Started a local Ray instance", Optuna's "A new study created", MLflow's "Creating
initial MLflow database tables") is bookkeeping a sweep's user does not act on; with ``-v``
it is all shown, as each library would by default. Their warnings stay on, with one
exception: Ray's notice that a new local cluster enables token authentication (its own
default since 2.5x; nothing here to fix) is shown only with ``-v``. Warnings the sweep
itself caused are fixed at their source instead (e.g. Tune's checkpoint-sync warning, by
``orchestrator.tuner``).
"""

from __future__ import annotations

import logging
import os

# logger -> the level below which its records are dropped by default
QUIET_LEVELS = {
    "mlflow": logging.WARNING,
    "alembic": logging.WARNING,  # MLflow's schema migrations
    "optuna": logging.WARNING,
    "ray": logging.WARNING,
    "ray._private.authentication": logging.ERROR,  # the token-authentication notice
}


def configure(verbose: bool) -> int:
    """Set the libraries' log levels for this process (and, through the environment, for the
    ones they start); returns the level to hand ``ray.init(logging_level=...)``."""
    if verbose:
        for name in QUIET_LEVELS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        return logging.INFO
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when MLflow is imported
    for name, level in QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    return logging.WARNING
