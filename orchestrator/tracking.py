"""MLflow tracking: one experiment per sweep, a parent run per invocation, a child run per trial.

All MLflow writes happen in the Ray driver (a Tune callback), never in the trial workers:
SQLite allows one writer at a time, and trial processes writing it concurrently hit
"database is locked" and can drop a run. One writer per sweep cannot lose one.
Ray's ``MLflowLoggerCallback`` is not used because it has no parent run, sets the same
tags on every trial (ours differ: weights' source, checkpoint identity) and logs every Ray
bookkeeping number as a metric.

Each Tune callback is one MLflow write (``log_batch``: metrics, params and tags together),
not one per tag: with a SQLite store every write is its own transaction (journal and fsync).
In a sweep, every write but the run's creation is made by a process beside the driver
(``orchestrator.run_writer``), in order, so Tune's driver loop does not wait for them; the
writes are flushed whenever Tune snapshots the experiment, so a snapshot never names a
run whose writes before it are still queued.
"""

from __future__ import annotations

import json
import numbers
import socket
import time
from collections import Counter

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial
from ray.tune.logger import LoggerCallback

from experiments.cost import COST_METRICS, COST_PARAMS, RUN_SETTINGS
from experiments.regularisation import EMA_PREFIX, RECIPE_PARAMS
from experiments.trial import TrialSpec
from orchestrator.failures import (
    ERROR_ARTIFACT,
    failure_kind,
    failure_reason,
    trial_error_text,
)
from orchestrator.run_writer import InlineWriter, ProcessWriter, RunWriter
from orchestrator.spec import SweepSpec
from orchestrator.store import experiment_id, run_rows

PARENT_TAG = "mlflow.parentRunId"
TRIAL_METRICS = (
    "train_loss", "val_loss", "val_acc", "val_mean_class_acc", "val_top5_acc", "best_val_acc",
    "lr", "chance_loss",  # ln C: the claims' "did not learn", --epochs auto's start
)

# What the worker reports it built the block from -> the run's tags (the identity of the
# weights the trial actually loaded, not one the driver guessed).
BUILT_TAGS = {"checkpoint_identity": "checkpoint.identity", "checkpoint_path": "checkpoint.path",
              "layers_sha256": "checkpoint.layers_sha256", "compute_dtype": "compute_dtype",
              "checkpoint_quantization": "checkpoint.quantization",
              # the visual encoder's own starting weights (--encoder-weights): the file's
              # sha256, what became of its classifier, the encoder parameters frozen
              "encoder_checkpoint": "encoder.checkpoint", "encoder_head": "encoder.head",
              "encoder_frozen_params": "encoder.frozen_params"}

# Whatever a task's objective reports (val_minADE, val_recall_i2t_at_5, ...) and its best so far.
# The EMA's (ema_val_acc, ...) as well: the weights' moving average evaluated alongside.
TASK_METRIC_PREFIXES = ("val_", "best_", "conc_", "miou_", EMA_PREFIX,
                        "block_cka", "grad_coherence")  # Bai et al.'s (block_measures.py)

# Where and how the attempt ran -> tags set again whenever a result says otherwise (a retry
# may land on another node, with other CPUs): tag name -> result key.
ATTEMPT_TAGS = {"ray.node_id": "node_id", "ray.node_ip": "node_ip", "host": "hostname",
                **{key: key for key in RUN_SETTINGS}}


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's too


def _applies(value: object) -> bool:
    """None or "" is how a result says a key does not apply here (MFU on a CPU)."""
    return value is not None and value != ""


NOTE_TAG = "mlflow.note.content"  # the run's description in MLflow's UI
NOT_APPLICABLE = "none"  # a param that does not apply to a run (no LM: family, size, layers)


def param_text(value: object) -> str:
    """A param's value as MLflow shows it: explicit ``none`` where it does not apply, so every
    run has the same keys and no empty value sorts as 0 in a parallel-coordinates plot."""
    return NOT_APPLICABLE if value is None or value == "" else str(value)


def sweep_run_name(spec: SweepSpec, n_trials: int) -> str:
    return f"{spec.name} ({n_trials} trials)"


def start_parent_run(client: MlflowClient, experiment: str, spec: SweepSpec, n_trials: int) -> str:
    run = client.create_run(
        experiment_id(client, experiment),
        run_name=sweep_run_name(spec, n_trials),
        tags={"lmblocks.kind": "sweep", "lmblocks.host": socket.gethostname(),
              "lmblocks.started": time.strftime("%Y-%m-%d %H:%M:%S")},
    )
    rid = run.info.run_id
    spec_dict = _spec_dict(spec)
    client.log_dict(rid, spec_dict, "sweep_spec.json")
    params = {"n_trials": n_trials, **spec_dict}
    client.log_batch(rid, params=[Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v))
                                  for k, v in params.items()])
    return rid


def _spec_dict(spec: SweepSpec) -> dict:
    import dataclasses

    d = dataclasses.asdict(spec)
    hp = d.pop("hparams")
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, **hp}


def cell_description(spec: TrialSpec) -> str:
    """The run's note: what the trial inserts where, in words."""
    from encoders.lm.controls import get_control
    from experiments.tasks.registry import task_for

    what = get_control(spec.control).label
    if spec.family:
        layers = f", layer {spec.layer_label}" if spec.layers else ""
        what += f" ({spec.family}/{spec.size}{layers})"
    enc = spec.encoder
    encoder = "" if not (enc.weights or enc.train == "frozen") else (
        f" Encoder: {'weights from ' + enc.weights if enc.weights else 'from scratch'}"
        f"{', frozen' if enc.train == 'frozen' else ''}.")
    return (f"{what} on {spec.task}: {task_for(spec.task, enc).description}. Seed {spec.seed}; "
            f"LM weights: {spec.weights_source}.{encoder}")


def log_sweep_summary(tracking_uri: str, parent_run_id: str, report, claims: list[str]) -> None:
    """The sweep run's summary, once the report is built: finished/failed trial counts and
    trial-hours of this invocation's runs, the best cell's mean (``best_<metric>``, the cell
    in a tag), and the findings and control table as the run's note."""
    client = MlflowClient(tracking_uri)
    run = client.get_run(parent_run_id)
    children = run_rows(client, run.info.experiment_id, PARENT_TAG, parent_run_id)
    status = Counter(r.status for r in children)
    hours = sum((r.end_time or r.start_time) - r.start_time for r in children) / 3.6e6
    metrics = {"trials_finished": status["FINISHED"], "trials_failed": status["FAILED"],
               "trial_hours": hours}
    tags: dict[str, str] = {}
    best = report.best_cell()
    if best is not None:
        metrics[f"best_{report.metric}"] = float(best["mean"])
        cell = " ".join(f"{c}={best[c]}" for c in ("task", "family", "size", "layers", "control")
                        if best.get(c))
        tags["best_cell"] = f"{cell} (n={int(best['n'])})"
    controls = report.tables.get("by_control")
    note = ["## Findings", "", *(claims or ["(no claim this sweep's cells can test)"])]
    if controls is not None and not controls.empty:
        from results.tables import without_empty_columns

        note += ["", "## Controls", "", without_empty_columns(controls).to_markdown(index=False)]
    note += ["", "The whole report: the artifacts under report/ (report.html)."]
    tags[NOTE_TAG] = "\n".join(note)
    ts = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), ts, 0)
                                             for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])


class MlflowTrialLogger(LoggerCallback):
    """Creates each trial's child run on start, logs per-epoch metrics, ends it FINISHED/FAILED."""

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str,
                 background: bool = False) -> None:
        """``background``: writes made by a process beside the driver (a sweep); otherwise
        each at once (a logger driven by hand, as in the tests)."""
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.background = background
        self._writer: RunWriter | None = None
        self.experiment_id = experiment_id(self.client, experiment)
        self.parent_run_id = parent_run_id
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.tagged: set[str] = set()
        self.where: dict[tuple[str, str], str] = {}  # (run, tag) -> value last set
        self.params: dict[str, set[str]] = {}  # run -> param keys it has (seen this session)
        self.finished = 0
        self.failed = 0
        self.resumed = False
        self.earlier: dict[str, str] | None = None  # resumed: Tune trial id -> run, in MLflow

    def get_state(self) -> dict:
        """Saved with Tune's experiment state, so a resumed sweep keeps trial -> run. Tune
        calls it at every snapshot: the queued writes are made first."""
        self.flush()
        return {"runs": dict(self.runs), "tagged": sorted(self.tagged)}

    @property
    def writer(self) -> RunWriter:
        """Started at the first write: Tune pickles its callbacks with the experiment
        (``--resume`` unpickles them), and a process and its queues do not pickle."""
        if self._writer is None:
            self._writer = (ProcessWriter(self.tracking_uri) if self.background
                            else InlineWriter(self.client))
        return self._writer

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_writer": None}

    def flush(self) -> None:
        """Every write made so far is in MLflow (raises the first that failed)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and stop the writer (a later write starts another)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        """Every write in MLflow before the sweep reads its runs back (orphans, summary)."""
        self.close()

    def set_state(self, state: dict) -> None:
        """A resumed sweep. Tune's snapshot may predate the dead driver's last runs: a trial it
        restores as pending may have started (its run created) after the snapshot; that run
        is found by the trial's id in MLflow (``_earlier_run``), not created twice."""
        self.runs = dict(state.get("runs", {}))
        self.tagged = set(state.get("tagged", []))
        self.resumed = True

    def log_trial_start(self, trial: Trial) -> None:
        self._run_of(trial)

    def _run_of(self, trial: Trial) -> str:
        """The trial's MLflow run, created on first sight: at its start, or at its end when it
        failed before it could start (an out-of-memory kill while its worker was set up)."""
        if trial.trial_id in self.runs:  # a retried trial keeps its run
            return self.runs[trial.trial_id]
        if (run_id := self._earlier_run(trial.trial_id)) is not None:
            self.runs[trial.trial_id] = run_id
            return run_id
        spec = TrialSpec.from_config(trial.config)
        tags = {
            PARENT_TAG: self.parent_run_id,
            "lmblocks.kind": "trial",
            "lmblocks.trial_key": spec.key,
            "lmblocks.cell_key": str(trial.config.get("cell_key", spec.key)),
            "lmblocks.tune_trial_id": trial.trial_id,
            "weights.source": spec.weights_source,
        }
        tags[NOTE_TAG] = cell_description(spec)
        run = self.client.create_run(self.experiment_id, run_name=spec.run_name, tags=tags)
        self.runs[trial.trial_id] = run_id = run.info.run_id
        config = spec.to_config()
        self.writer.submit("log_batch", run_id,
                           params=[Param(k, param_text(v)) for k, v in config.items()])
        self.params[run_id] = set(config)
        return run_id

    def _earlier_run(self, trial_id: str) -> str | None:
        """In a resumed sweep, the run an earlier driver made for this Tune trial, if any: the
        sweep's runs are read once, at the first trial the restored state does not know."""
        if not self.resumed:  # every run of this sweep is in self.runs
            return None
        if self.earlier is None:
            self.flush()
            found = self.client.search_runs(
                [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                max_results=50_000)
            self.earlier = {r.data.tags["lmblocks.tune_trial_id"]: r.info.run_id
                            for r in found if "lmblocks.tune_trial_id" in r.data.tags}
        return self.earlier.get(trial_id)

    def _logged_params(self, run_id: str) -> set[str]:
        """Param keys the run has: known for runs created by this driver; read once from
        MLflow for a run of an earlier driver (a resumed sweep), whose state may predate
        its last writes. MLflow refuses to change a param, so none is logged twice."""
        if run_id not in self.params:
            self.flush()
            self.params[run_id] = set(self.client.get_run(run_id).data.params)
        return self.params[run_id]

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        """A failed trial restarts from its last checkpoint: its run records the retry."""
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self.flush()
            retries = self.client.get_run(run_id).data.tags.get("retries", "0")
            self.writer.submit("log_batch", run_id, tags=[
                RunTag("retries", str(int(retries) + 1)),
                RunTag("last_failure", failure_reason(trial_error_text(trial)))])

    def log_trial_result(self, iteration: int, trial: Trial, result: dict) -> None:
        """One ``log_batch``: the epoch's metrics, the trial's cost constants (params, once
        per run), what the worker built the block from (tags, once per run) and where and
        how this attempt runs (tags, when they change)."""
        run_id = self.runs[trial.trial_id]
        step = int(result.get("epoch", iteration))
        ts = int(time.time() * 1000)
        named = [k for k in TRIAL_METRICS + COST_METRICS if k in result] + [
            k for k in result  # the task's own validation metrics and information-filtering scores
            if k.startswith(TASK_METRIC_PREFIXES) and k not in TRIAL_METRICS]
        metrics = [Metric(k, float(result[k]), ts, step) for k in named if _is_number(result[k])]
        if "time_this_iter_s" in result:
            metrics.append(Metric("epoch_time_s", float(result["time_this_iter_s"]), ts, step))
        logged = self._logged_params(run_id)
        params = {k: param_text(result[k]) for k in COST_PARAMS + RECIPE_PARAMS
                  if k not in logged and k in result}
        tags: dict[str, str] = {}
        if run_id not in self.tagged:  # what the worker built its block from: once per run
            tags.update({tag: str(result[key]) for key, tag in BUILT_TAGS.items()
                         if result.get(key)})
        changed = {tag: str(result[key]) for tag, key in ATTEMPT_TAGS.items()
                   if _applies(result.get(key))
                   and self.where.get((run_id, tag)) != str(result[key])}
        tags.update(changed)
        self.writer.submit("log_batch", run_id, metrics=metrics,
                           params=[Param(k, v) for k, v in params.items()],
                           tags=[RunTag(k, v) for k, v in tags.items()])
        # recorded once submitted: made at once (InlineWriter: a failed write raises here and
        # is tried again with the next result), or queued (a failed write fails the sweep at
        # the next flush)
        logged.update(params)
        self.tagged.add(run_id)
        self.where.update({(run_id, tag): value for tag, value in changed.items()})

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        run_id = self._run_of(trial)
        maps = (trial.last_result or {}).get("probe_maps")
        if maps:  # the probe batch's per-token maps at the trial's last epoch
            self.writer.submit("log_text", run_id, maps, "analysis/probe_maps.json")
        tags: dict[str, str] = {}
        error = ""
        if failed:
            self.failed += 1
            error = trial_error_text(trial)  # every attempt's traceback, as Tune wrote it
            reason = failure_reason(error)
            tags = {"failure.reason": reason, "failure.kind": failure_kind(reason)}
        else:
            self.finished += 1
            planned = int(trial.config.get("epochs", 0))
            done = int((trial.last_result or {}).get("epoch", planned))
            if done < planned:  # an early-stopping scheduler (ASHA) ended it
                tags = {"stopped_early": f"after epoch {done} of {planned}"}
        if tags:
            self.writer.submit("log_batch", run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if error:  # the terminal shows none of it: the whole text stays in the run
            self.writer.submit("log_text", run_id, error, ERROR_ARTIFACT)
        self.writer.submit("set_terminated", run_id, "FAILED" if failed else "FINISHED")
