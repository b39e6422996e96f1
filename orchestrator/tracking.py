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
import socket
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial
from ray.tune.logger import LoggerCallback

from orchestrator.plan import TrialSpec
from orchestrator.spec import SweepSpec

PARENT_TAG = "mlflow.parentRunId"
TRIAL_METRICS = (
    "train_loss", "val_loss", "val_acc", "best_val_acc", "frozen_params", "trainable_params"
)


def default_tracking_uri() -> str:
    """SQLite in the working directory, by absolute path (Ray trials run in other dirs)."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


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


def finished_trial_keys(tracking_uri: str, experiment: str) -> set[str]:
    """Trial keys with a FINISHED run in the experiment: cells that need not run again."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`lmblocks.kind` = 'trial' AND attributes.status = 'FINISHED'",
        max_results=50_000,
    )
    return {r.data.tags.get("lmblocks.trial_key") for r in runs} - {None}


def run_name(t: TrialSpec) -> str:
    if t.control == "none":
        return f"none-{t.task}-s{t.seed}"
    layer = f"-L{t.layer_label}" if t.layers else ""
    return f"{t.family}-{t.size}{layer}-{t.control}-{t.task}-s{t.seed}"


class MlflowTrialLogger(LoggerCallback):
    """Creates each trial's child run on start, logs per-epoch metrics, ends it FINISHED/FAILED."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        parent_run_id: str,
        identities: dict[tuple[str, str], str],
    ) -> None:
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment)
        self.parent_run_id = parent_run_id
        self.identities = identities  # (family, size) -> checkpoint identity, resolved up front
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.tagged: set[str] = set()
        self.finished = 0
        self.failed = 0

    def get_state(self) -> dict:
        """Saved with Tune's experiment state, so a resumed sweep keeps trial -> run."""
        return {"runs": dict(self.runs), "tagged": sorted(self.tagged)}

    def set_state(self, state: dict) -> None:
        self.runs = dict(state.get("runs", {}))
        self.tagged = set(state.get("tagged", []))

    def log_trial_start(self, trial: Trial) -> None:
        if trial.trial_id in self.runs:  # a retried trial keeps its run
            return
        spec = TrialSpec.from_config(trial.config)
        if spec.control == "pretrained":
            checkpoint = self.identities[(spec.family, spec.size)]
        elif spec.control == "random":
            checkpoint = f"random-init:{spec.family}/{spec.size}:seed={spec.seed}"
        else:
            checkpoint = ""
        tags = {
            PARENT_TAG: self.parent_run_id,
            "lmblocks.kind": "trial",
            "lmblocks.trial_key": spec.key,
            "lmblocks.tune_trial_id": trial.trial_id,
            "weights.source": spec.weights_source,
            "checkpoint.identity": checkpoint,
        }
        run = self.client.create_run(self.experiment_id, run_name=run_name(spec), tags=tags)
        self.runs[trial.trial_id] = run.info.run_id
        params = [mlflow.entities.Param(k, str(v)) for k, v in spec.to_config().items()]
        self.client.log_batch(run.info.run_id, params=params)

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
        ]
        if "time_this_iter_s" in result:
            metrics.append(
                mlflow.entities.Metric("epoch_time_s", float(result["time_this_iter_s"]), ts, step)
            )
        self.client.log_batch(run_id, metrics=metrics)
        if run_id not in self.tagged:  # what the trial resolved: set once per run
            self.tagged.add(run_id)
            if result.get("layers_sha256"):
                self.client.set_tag(run_id, "checkpoint.layers_sha256", result["layers_sha256"])
            if result.get("compute_dtype"):
                self.client.set_tag(run_id, "compute_dtype", result["compute_dtype"])

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        if failed:
            self.failed += 1
            self.client.set_tag(run_id, "failure.reason", _failure_reason(trial))
        else:
            self.finished += 1
            planned = int(trial.config.get("epochs", 0))
            done = int((trial.last_result or {}).get("epoch", planned))
            if done < planned:  # an early-stopping scheduler (ASHA) ended it
                self.client.set_tag(run_id, "stopped_early", f"after epoch {done} of {planned}")
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def _failure_reason(trial: Trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        lines = Path(path).read_text().strip().splitlines() if path else []
    except OSError:
        lines = []
    return (lines[-1] if lines else "unknown error")[:500]
