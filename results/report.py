"""Ablation report from MLflow alone: tidy runs -> table (Markdown + CSV) -> plot (PNG).

``python -m results.report --experiment NAME`` rebuilds it for the latest sweep of NAME.
Table: for each family and task, layer selection x model size, final validation metric as
mean +- std over seeds, and the paired difference against the ``none`` control (same task,
same seed), so "the block helps" is read against the ViT alone.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

AXES = ["family", "size", "layers", "task", "control", "seed"]
CONTROL_ORDER = ["pretrained", "random", "adapters", "none"]
HPARAMS = ["lr", "weight_decay", "adapter_init"]


class ReportError(RuntimeError):
    pass


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


def load_runs(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> pd.DataFrame:
    """One row per trial cell: every axis, status, final and best metrics.

    By default the whole experiment (every sweep invocation that added cells to the study),
    one run per trial key: the latest FINISHED one, else the latest. With ``parent_run_id``,
    only that invocation's runs. ``attrs["parent_run_id"]`` is the latest sweep run.
    """
    client = MlflowClient(tracking_uri)
    latest = latest_sweep_run(client, experiment)
    exp_id = client.get_run(latest).info.experiment_id
    mlflow.set_tracking_uri(tracking_uri)
    where = (f"tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id
             else "tags.`lmblocks.kind` = 'trial'")
    raw = mlflow.search_runs(experiment_ids=[exp_id], filter_string=where, output_format="pandas")
    if not raw.empty and not parent_run_id and "tags.lmblocks.trial_key" in raw:
        raw = (
            raw.assign(_done=raw["status"].eq("FINISHED"))
            .sort_values(["_done", "start_time"], ascending=False)
            .drop_duplicates("tags.lmblocks.trial_key")
            .drop(columns="_done")
        )
    if raw.empty:
        empty = pd.DataFrame(columns=[*AXES, "status", "run_id"])
        empty.attrs["parent_run_id"] = parent_run_id or latest
        return empty
    df = pd.DataFrame({axis: raw[f"params.{axis}"].fillna("") for axis in AXES})
    df["seed"] = df["seed"].astype(int)
    df["status"] = raw["status"]
    df["run_id"] = raw["run_id"]
    df["weights_source"] = raw.get("tags.weights.source")
    for hp in HPARAMS:
        df[hp] = raw.get(f"params.{hp}")
    for col in raw.columns:
        if col.startswith("metrics."):
            df[col.removeprefix("metrics.")] = raw[col]
    for metric in ("train_loss", "val_loss", "val_acc", "best_val_acc"):
        if metric not in df:  # every run failed before its first epoch
            df[metric] = float("nan")
    df.attrs["parent_run_id"] = parent_run_id or latest
    return df


def _layer_key(label: str) -> float:
    return float(label.split(":")[0]) if label else -1.0


def best_hparams(df: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """One row per (cell, seed): where a hyperparameter search ran several trials of it, the
    FINISHED one with the best ``metric`` (else the latest failure); ``hparam_trials`` says
    how many there were, so a reader sees what was selected from."""
    if df.empty:
        return df.assign(hparam_trials=pd.Series(dtype=int))
    ranked = df.assign(_done=df["status"].eq("FINISHED"), _m=df[metric].fillna(float("-inf")))
    counts = ranked.groupby(AXES)["run_id"].transform("size")
    ranked = ranked.assign(hparam_trials=counts).sort_values(["_done", "_m"], ascending=False)
    return ranked.drop_duplicates(AXES).drop(columns=["_done", "_m"]).sort_index()


def summarize(df: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """Per cell: mean, std, n over FINISHED seeds, failed count, paired delta vs ``none``.
    Cells searched over hyperparameters count with their best trial per seed."""
    df = best_hparams(df, metric)
    done = df[df["status"] == "FINISHED"]
    base = done[done["control"] == "none"].set_index(["task", "seed"])[metric]
    rows = []
    for key, grp in df.groupby(["family", "size", "layers", "task", "control"], sort=False):
        ok = grp[grp["status"] == "FINISHED"]
        paired = [
            v - base[(t, s)]
            for t, s, v in zip(ok["task"], ok["seed"], ok[metric], strict=True)
            if (t, s) in base.index
        ]
        rows.append(
            {
                **dict(zip(["family", "size", "layers", "task", "control"], key, strict=True)),
                "mean": ok[metric].mean(),
                "std": ok[metric].std(ddof=1) if len(ok) > 1 else float("nan"),
                "n": len(ok),
                "failed": int((grp["status"] != "FINISHED").sum()),
                "delta_vs_none": (sum(paired) / len(paired)) if paired else float("nan"),
                "hparam_trials": int(grp["hparam_trials"].max()),
            }
        )
    out = pd.DataFrame(rows)
    out["_order"] = out["control"].map(CONTROL_ORDER.index)
    out["_layer"] = out["layers"].map(_layer_key)
    return out.sort_values(["task", "family", "_order", "size", "_layer"]).drop(
        columns=["_order", "_layer"]
    )


def _cell(row: pd.Series) -> str:
    text = f"{row['mean']:.3f}"
    if row["n"] > 1:
        text += f" ± {row['std']:.3f}"
    if row["control"] != "none" and pd.notna(row["delta_vs_none"]):
        text += f" (Δ {row['delta_vs_none']:+.3f})"
    if row["failed"]:
        text += f" [{row['failed']} failed]"
    if row.get("hparam_trials", 1) > 1:
        text += f" [best of {row['hparam_trials']}]"
    return text


def ablation_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows: task, family, control, layers; columns: model size; cells: mean ± std (Δ)."""
    s = summary.assign(cell=summary.apply(_cell, axis=1))
    s["family"] = s["family"].replace("", "-")
    s["size"] = s["size"].replace("", "-")
    s["layers"] = s["layers"].replace("", "-")
    table = s.pivot_table(
        index=["task", "family", "control", "layers"], columns="size", values="cell",
        aggfunc="first", sort=False,
    )
    return table.fillna("").reset_index().rename_axis(columns=None)


def plot_metric_vs_layer(summary: pd.DataFrame, path: Path, metric: str = "val_acc") -> Path:
    pre = summary[summary["control"] == "pretrained"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (task, family, size), grp in pre.groupby(["task", "family", "size"]):
        grp = grp.assign(x=grp["layers"].map(_layer_key)).sort_values("x")
        ax.errorbar(grp["x"], grp["mean"], yerr=grp["std"].fillna(0), marker="o", capsize=3,
                    label=f"{family}-{size} pretrained block ({task})")
    styles = {"random": ":", "adapters": "-.", "none": "--"}
    colors = {"random": "tab:red", "adapters": "tab:green", "none": "grey"}
    for _, row in summary[summary["control"] != "pretrained"].iterrows():
        name = "no block" if row["control"] == "none" else f"{row['family']}-{row['size']} {row['control']}"
        ax.axhline(row["mean"], linestyle=styles[row["control"]], color=colors[row["control"]],
                   label=f"{name} ({row['task']})")
    ax.set_xlabel("index of the frozen LM layer inserted after the last ViT block")
    ax.set_ylabel(f"final {metric.replace('_', ' ')} (mean ± std over seeds)")
    ax.set_title("Frozen LM block: validation accuracy by layer, against controls")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass
class Report:
    table: pd.DataFrame
    summary: pd.DataFrame
    files: list[Path]


def write_report(df: pd.DataFrame, out_dir: str | Path, metric: str = "val_acc") -> Report:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(df, metric)
    table = ablation_table(summary)
    md = out / "ablation.md"
    md.write_text(
        f"# Ablation: final {metric} (mean ± std over seeds; Δ = paired difference vs no block)\n\n"
        + table.to_markdown(index=False)
        + "\n"
    )
    csv = out / "ablation.csv"
    summary.to_csv(csv, index=False)
    runs_csv = out / "runs.csv"
    df.to_csv(runs_csv, index=False)
    png = plot_metric_vs_layer(summary, out / "metric_vs_layer.png", metric)
    return Report(table, summary, [md, csv, runs_csv, png])


def build_report(
    tracking_uri: str, experiment: str, out_dir: str | Path, parent_run_id: str | None = None,
    log_to: str | None = None,
) -> Report:
    """Report on the experiment (or one sweep run); artifacts logged to ``log_to`` if given."""
    df = load_runs(tracking_uri, experiment, parent_run_id)
    if df.empty:
        raise ReportError(f"experiment {experiment!r}: the sweep has no trial runs")
    report = write_report(df, out_dir)
    if log_to:
        client = MlflowClient(tracking_uri)
        for f in report.files:
            client.log_artifact(log_to, str(f), artifact_path="report")
    return report


def main(argv: list[str] | None = None) -> int:
    from orchestrator.tracking import default_tracking_uri

    p = argparse.ArgumentParser(prog="python -m results.report", description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="MLflow experiment name of the sweep")
    p.add_argument("--tracking-uri", default=None, help="default: sqlite mlflow.db in this dir")
    p.add_argument("--parent-run", default=None,
                   help="only this sweep run's trials (default: every cell of the experiment)")
    p.add_argument("--out", default=None, help="output dir (default: lmblocks-reports/EXPERIMENT)")
    args = p.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    out = Path(args.out or Path("lmblocks-reports") / args.experiment).resolve()
    try:
        client = MlflowClient(uri)
        log_to = args.parent_run or latest_sweep_run(client, args.experiment)
        report = build_report(uri, args.experiment, out, args.parent_run, log_to=log_to)
    except ReportError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    print(report.table.to_markdown(index=False))
    print("\nreport written:", *(str(f) for f in report.files), sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
