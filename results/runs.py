"""Every trial of one or several sweeps as one tidy DataFrame, read from MLflow alone.

One row per trial: the experiment, every config axis and hyperparameter as a column, the
run's status (and why it failed), where its weights came from, its final and best metrics
and the information-filtering scores. MLflow is the source of truth; nothing is read from
Ray's folders, so a report can be rebuilt anywhere the tracking server is reachable.
"""

from __future__ import annotations

from functools import cache

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from experiments.cost import COST_PARAMS
from experiments.trial import (
    AXES,
    DEFAULT_POSITION,
    ENCODER_CONFIG,
    HPARAMS,
    EncoderChoice,
    task_label,
)
from results.run_table import search_runs_frame
from results.stores import ReportError

NOT_APPLICABLE = "none"  # a param's value where it does not apply (orchestrator.tracking)
NO_LM_AXES = ("family", "size", "layers")  # "none" there: a cell with no LM
FINAL_METRICS = ["train_loss", "val_loss", "val_acc", "best_val_acc"]


def latest_sweep_run(client: MlflowClient, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise ReportError(f"unknown experiment {experiment!r}; valid: {', '.join(names) or 'none'}")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`lmblocks.kind` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ReportError(f"experiment {experiment!r} has no sweep run")
    return runs[0].info.run_id


def _one_experiment(client: MlflowClient, experiment: str,
                    parent_run_id: str | None) -> pd.DataFrame:
    latest = latest_sweep_run(client, experiment)
    exp_id = client.get_run(latest).info.experiment_id
    tag, value = (("mlflow.parentRunId", parent_run_id) if parent_run_id
                  else ("lmblocks.kind", "trial"))
    raw = search_runs_frame(client, exp_id, tag, value)
    if not raw.empty and not parent_run_id and "tags.lmblocks.trial_key" in raw:
        # a cell run again by a later invocation: its latest FINISHED run, else its latest
        raw = (
            raw.assign(_done=raw["status"].eq("FINISHED"))
            .sort_values(["_done", "start_time"], ascending=False)
            .drop_duplicates("tags.lmblocks.trial_key")
            .drop(columns="_done")
        )
    raw.attrs["parent_run_id"] = parent_run_id or latest
    return raw


def tidy(raw: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """MLflow's search_runs frame -> one row per trial with plain column names."""
    if "params.seed" in raw:  # a run created, its driver killed before it logged its config:
        raw = raw[raw["params.seed"].notna()]  # no cell to put it in (--resume reruns that)
    if raw.empty:
        return pd.DataFrame(columns=["experiment", *AXES, "status", "run_id"])
    df = pd.DataFrame({axis: raw.get(f"params.{axis}", pd.Series(DEFAULT_POSITION,
                                                                  index=raw.index)).fillna("")
                       for axis in AXES})
    for axis in NO_LM_AXES:  # logged as "none" where no LM applies (older runs: empty)
        df[axis] = df[axis].replace(NOT_APPLICABLE, "")
    # runs from before the position axis ran at the end; a cell without an LM (``none``)
    # inserts nothing, so it has no position
    df["position"] = df["position"].replace("", DEFAULT_POSITION).where(df["family"] != "", "")
    df["task"] = encoder_tasks(raw, df["task"])
    df.insert(0, "experiment", experiment)
    df["seed"] = df["seed"].astype(int)
    for hp in HPARAMS:
        df[hp] = raw.get(f"params.{hp}")
    df["status"] = raw["status"]
    for col, tag in (("failure_kind", "failure.kind"), ("failure_reason", "failure.reason"),
                     ("weights_source", "weights.source"),
                     ("checkpoint", "checkpoint.identity"), ("cell_key", "lmblocks.cell_key"),
                     ("trial_key", "lmblocks.trial_key"), ("stopped_early", "stopped_early")):
        df[col] = raw.get(f"tags.{tag}")
    df["run_id"] = raw["run_id"]
    if "end_time" in raw and "start_time" in raw:  # wall time of the run, retries included
        df["trial_hours"] = (raw["end_time"] - raw["start_time"]).dt.total_seconds() / 3600
    for col in raw.columns:
        if col.startswith("metrics."):
            df[col.removeprefix("metrics.")] = raw[col]
    # constants, logged once as params (text): numbers where numeric; runs from before
    # they were params (frozen/trainable_params were metrics) keep their metric
    for name in COST_PARAMS:
        values = raw.get(f"params.{name}")
        if values is not None:
            values = values.replace(NOT_APPLICABLE, None)
            numeric = pd.to_numeric(values, errors="coerce")
            value = values if numeric.isna().all() and values.notna().any() else numeric
            df[name] = value.combine_first(df[name]) if name in df else value
    for metric in FINAL_METRICS:
        if metric not in df:  # every run failed before its first epoch
            df[metric] = float("nan")
    df["layer_index"] = df["layers"].map(layer_index)
    df["lm_params"] = [lm_params(f, s) for f, s in zip(df["family"], df["size"], strict=True)]
    return df.reset_index(drop=True)


def encoder_tasks(raw: pd.DataFrame, tasks: pd.Series) -> pd.Series:
    """Each run's task as the report names it: with its encoder choice where that is not the
    task's own (``images[deit_small_patch16_224 frozen]``), so that runs of one task with a
    frozen and a trained encoder, or two weight files, are different cells, never averaged."""
    cols = {f: raw[f"params.{k}"] for k, f in ENCODER_CONFIG.items() if f"params.{k}" in raw}
    if not cols:  # runs from before the encoder choice existed
        return tasks
    out = []
    for i, task in enumerate(tasks):
        given = {f: col.iloc[i] for f, col in cols.items()}
        choice = EncoderChoice(**{f: int(v) if f == "image_size" else str(v)
                                  for f, v in given.items()
                                  if isinstance(v, str) and v not in ("", NOT_APPLICABLE)})
        out.append(task_label(task, choice))
    return pd.Series(out, index=tasks.index, dtype=object)


def load_runs(tracking_uri: str, experiments: str | list[str],
              parent_run_id: str | None = None) -> pd.DataFrame:
    """One row per trial of the experiments (every sweep invocation that added cells; one
    run per trial key). With ``parent_run_id`` (one experiment), only that invocation.
    ``attrs["parent_run_ids"]``: the latest sweep run of each experiment, where the report
    is logged."""
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    frames, parents = [], []
    for name in names:
        raw = _one_experiment(client, name, parent_run_id)
        frames.append(tidy(raw, name))
        parents.append(raw.attrs["parent_run_id"])
    frames = [f for f in frames if not f.empty] or frames[:1]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df.attrs["parent_run_ids"] = parents
    df.attrs["parent_run_id"] = parents[0]
    return df


def layer_index(label: str) -> float:
    """First layer of a selection ('5', '3:5' -> 3); NaN for no block."""
    return float(str(label).split(":")[0]) if label else float("nan")


@cache
def lm_params(family: str, size: str) -> float:
    """Parameter count of the whole LM a block comes from (the x axis of the size plot)."""
    if not family or not size:
        return float("nan")
    import encoders.lm.families  # noqa: F401  (registers the families)
    from encoders.lm.registry import get_family

    try:
        return float(get_family(family).model_params(size))
    except (KeyError, ValueError):  # a family or size this install does not know
        return float("nan")


@cache
def last_layer(family: str, size: str) -> int | None:
    import encoders.lm.families  # noqa: F401
    from encoders.lm.registry import get_family

    try:
        return get_family(family).size(size).num_layers - 1
    except (KeyError, ValueError):
        return None
