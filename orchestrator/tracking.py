"""MLflow tracking: one experiment per sweep, a parent run per invocation, a child run per trial.

All MLflow writes happen in the Ray driver (a Tune callback), never in the trial workers:
SQLite allows one writer at a time, and trial processes writing it concurrently hit
"database is locked" and can drop a run. One writer per sweep cannot lose one.
Ray's ``MLflowLoggerCallback`` is not used because it has no parent run, sets the same
tags on every trial (ours differ: weights' source, checkpoint identity) and logs every Ray
bookkeeping number as a metric.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial
from ray.tune.logger import LoggerCallback

from experiments.trial import TrialSpec
from orchestrator.spec import SweepSpec

PARENT_TAG = "mlflow.parentRunId"
TRIAL_METRICS = (
    "train_loss", "val_loss", "val_acc", "val_mean_class_acc", "val_top5_acc", "best_val_acc",
    "frozen_params", "trainable_params", "lr",
)

# What the worker reports it built the block from -> the run's tags (the identity of the
# weights the trial actually loaded, not one the driver guessed).
BUILT_TAGS = {"checkpoint_identity": "checkpoint.identity", "checkpoint_path": "checkpoint.path",
              "layers_sha256": "checkpoint.layers_sha256", "compute_dtype": "compute_dtype"}

# Whatever a task's objective reports (val_minADE, val_recall_i2t_at_5, ...) and its best so far.
TASK_METRIC_PREFIXES = ("val_", "best_", "conc_")


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a SQLite store, artifacts next to the database (``mlruns/`` beside ``mlflow.db``),
    not in whatever directory the sweep was started from (MLflow's default, ``./mlruns``);
    a tracking server decides for itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    if not db.is_absolute():
        db = Path.cwd() / db
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (db.parent / "mlruns" / safe).as_uri()


def start_parent_run(client: MlflowClient, experiment: str, spec: SweepSpec, n_trials: int) -> str:
    run = client.create_run(
        experiment_id(client, experiment),
        run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"lmblocks.kind": "sweep", "lmblocks.host": socket.gethostname()},
    )
    rid = run.info.run_id
    client.log_dict(rid, _spec_dict(spec), "sweep_spec.json")
    client.log_param(rid, "n_trials", n_trials)
    for key, value in _spec_dict(spec).items():
        client.log_param(rid, key, json.dumps(value) if isinstance(value, list | dict) else value)
    return rid


def _spec_dict(spec: SweepSpec) -> dict:
    import dataclasses

    d = dataclasses.asdict(spec)
    hp = d.pop("hparams")
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, **hp}


def finished_cells(tracking_uri: str, experiment: str) -> Counter[str]:
    """FINISHED runs per cell key in the experiment: cells that need not run again.

    A cell is a plan row; its key is the row's full-config key, which is also the run's own
    key unless a hyperparameter search changed the run's hyperparameters."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return Counter()
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`lmblocks.kind` = 'trial' AND attributes.status = 'FINISHED'",
        max_results=50_000,
    )
    keys = (r.data.tags.get("lmblocks.cell_key") or r.data.tags.get("lmblocks.trial_key")
            for r in runs)
    return Counter(k for k in keys if k)


class MlflowTrialLogger(LoggerCallback):
    """Creates each trial's child run on start, logs per-epoch metrics, ends it FINISHED/FAILED."""

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment)
        self.parent_run_id = parent_run_id
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.tagged: set[str] = set()
        self.where: dict[tuple[str, str], str] = {}
        self.finished = 0
        self.failed = 0

    def get_state(self) -> dict:
        """Saved with Tune's experiment state, so a resumed sweep keeps trial -> run."""
        return {"runs": dict(self.runs), "tagged": sorted(self.tagged)}

    def set_state(self, state: dict) -> None:
        self.runs = dict(state.get("runs", {}))
        self.tagged = set(state.get("tagged", []))

    def log_trial_start(self, trial: Trial) -> None:
        self._run_of(trial)

    def _run_of(self, trial: Trial) -> str:
        """The trial's MLflow run, created on first sight: at its start, or at its end when it
        failed before it could start (an out-of-memory kill while its worker was set up)."""
        if trial.trial_id in self.runs:  # a retried trial keeps its run
            return self.runs[trial.trial_id]
        spec = TrialSpec.from_config(trial.config)
        tags = {
            PARENT_TAG: self.parent_run_id,
            "lmblocks.kind": "trial",
            "lmblocks.trial_key": spec.key,
            "lmblocks.cell_key": str(trial.config.get("cell_key", spec.key)),
            "lmblocks.tune_trial_id": trial.trial_id,
            "weights.source": spec.weights_source,
        }
        run = self.client.create_run(self.experiment_id, run_name=spec.run_name, tags=tags)
        self.runs[trial.trial_id] = run.info.run_id
        params = [mlflow.entities.Param(k, str(v)) for k, v in spec.to_config().items()]
        self.client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        """A failed trial restarts from its last checkpoint: its run records the retry."""
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            retries = self.client.get_run(run_id).data.tags.get("retries", "0")
            self.client.set_tag(run_id, "retries", str(int(retries) + 1))
            self.client.set_tag(run_id, "last_failure", _failure_reason(trial))

    def log_trial_result(self, iteration: int, trial: Trial, result: dict) -> None:
        run_id = self.runs[trial.trial_id]
        step = int(result.get("epoch", iteration))
        ts = int(time.time() * 1000)
        metrics = [
            mlflow.entities.Metric(k, float(result[k]), ts, step)
            for k in TRIAL_METRICS
            if k in result
        ] + [  # the task's own validation metrics and information-filtering scores
            mlflow.entities.Metric(k, float(v), ts, step)
            for k, v in result.items()
            if k.startswith(TASK_METRIC_PREFIXES) and k not in TRIAL_METRICS
            and isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if "time_this_iter_s" in result:
            metrics.append(
                mlflow.entities.Metric("epoch_time_s", float(result["time_this_iter_s"]), ts, step)
            )
        self.client.log_batch(run_id, metrics=metrics)
        if run_id not in self.tagged:  # what the worker built its block from: once per run
            self.tagged.add(run_id)
            for key, tag in BUILT_TAGS.items():
                if result.get(key):
                    self.client.set_tag(run_id, tag, str(result[key]))
        # where it ran, per attempt (a retry may land on another node)
        for tag, key in (("ray.node_id", "node_id"), ("ray.node_ip", "node_ip"),
                         ("host", "hostname")):
            if result.get(key) and self.where.get((run_id, tag)) != result[key]:
                self.where[(run_id, tag)] = result[key]
                self.client.set_tag(run_id, tag, str(result[key]))

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        run_id = self._run_of(trial)
        maps = (trial.last_result or {}).get("probe_maps")
        if maps:  # the probe batch's per-token maps at the trial's last epoch
            self.client.log_text(run_id, maps, "analysis/probe_maps.json")
        if failed:
            self.failed += 1
            reason = _failure_reason(trial)
            self.client.set_tag(run_id, "failure.reason", reason)
            self.client.set_tag(run_id, "failure.kind", failure_kind(reason))
        else:
            self.finished += 1
            planned = int(trial.config.get("epochs", 0))
            done = int((trial.last_result or {}).get("epoch", planned))
            if done < planned:  # an early-stopping scheduler (ASHA) ended it
                self.client.set_tag(run_id, "stopped_early", f"after epoch {done} of {planned}")
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*:")
FAILURE_KINDS = {
    "out-of-memory": ("OutOfMemoryError", "out of memory", "can't allocate memory",
                      "MemoryError", "running low on memory"),
    "non-finite-loss": ("NonFiniteLossError",),
}


def _failure_reason(trial: Trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    return failure_reason(text)


def failure_reason(error_text: str) -> str:
    """One line from a Tune error file: its last exception line (the root cause is re-raised
    last); failing that (a worker killed by Ray's memory monitor: message, then a memory
    table and advice), its first line of text."""
    lines = [ln.strip() for ln in error_text.splitlines()
             if ln.strip() and not ln.startswith("Failure # ")]
    found = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    return (found[-1] if found else lines[0] if lines else "unknown error")[:500]


def failure_kind(reason: str) -> str:
    """out-of-memory, non-finite-loss or error: what the report and a user filter on."""
    for kind, marks in FAILURE_KINDS.items():
        if any(m in reason for m in marks):
            return kind
    return "error"
