"""Ablation report from MLflow alone: tidy runs -> statistics -> the paper's tables, figures,
and one self-contained HTML page; logged to a sweep's parent run when asked (the sweep's own
report; ``lmblocks-report --log``). The command line is ``results/report.py``.

The report leads with its findings (``results/findings.py``: the claims' verdicts). Every
number is over seeds: mean ± std, n, and the paired difference against the control (same task
and seed) with its interval, labelled by n: a bootstrap "95% CI" with 3+ pairs, "range of 2"
with two; ``*`` marks a 95% CI excluding zero. Failed and missing seeds are written in the
cells, never dropped. A table or figure with nothing to say (one size per family, one layer)
is left out of the pages with a one-line reason (its CSV is still written).
The paper's own numbers (``results/paper.py``) are set beside the cells in ``paper.csv`` and
the markdown's last section: matching rows, else the paper's rows for the same controls as a
reference that is not comparable. Then the paper's claims, each with a verdict
(``results/claims.py``; ``claims.csv``).
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from encoders.lm.controls import get_control, list_controls, reference_controls
from experiments.tasks.registry import task_entry
from experiments.trial import task_of_label
from results import claims, convergence, findings, paper, plots, rectifier, tables
from results.runs import load_runs
from results.stats import MIN_PAIRS, best_hparams, summarize
from results.stores import ReportError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in reports

__all__ = ["Report", "ReportError", "build_report", "load_runs", "summarize", "write_report"]

TABLES = {
    "by_layer": "Table 1. Metric by layer index, per LM family and size (pretrained block)",
    "by_size": "Table 2. Metric by model size at a fixed layer: do only large LMs help?",
    "by_control": "Table 3. Task x control: no block, adapters only, random block, pretrained",
    "filtering": "Information filtering: metric change next to concentration gain",
    "cost": "Cost per cell, per trial: parameters (M), GFLOPs per sample, training samples/s, "
            "data wait, peak memory, MFU (GPU), trial-hours",
    "by_position": "Table D. Metric by the block's position in the encoder (end, middle, start, "
                   "after block i), per LM and layer, beside no block",
    "claims": "Claims of the paper, tested (results/claims.py)",
    "similarity": "Bai et al.: does the block's initial similarity with the encoder (linear "
                  "CKA) predict its gain? Spearman's rho over cells, bootstrap interval",
    "coherence": "Bai et al.: per-sample gradient coherence with the block, and without it",
    "prescreen": "--prescreen: the pretrained cells ranked by their initial similarity before "
                 "training; those screened out were not trained",
}


@dataclass
class Report:
    table: pd.DataFrame  # the by-layer/by-control view printed at the end of a sweep
    summary: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    files: list[Path]
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)  # results.claims.evaluate
    metric: str = "val_acc"  # what ``summary``'s mean is of
    higher_is_better: bool = True

    def best_cell(self) -> pd.Series | None:
        """The cell with the best mean over its finished seeds (None: no cell finished)."""
        done = self.summary[self.summary["n"] > 0] if "n" in self.summary else self.summary
        if done.empty or "mean" not in done:
            return None
        means = done["mean"].astype(float)
        return done.loc[means.idxmax() if self.higher_is_better else means.idxmin()]


def _higher_is_better(df: pd.DataFrame) -> bool:
    modes = set()
    for task in df["task"].unique():
        try:
            modes.add(task_entry(task_of_label(task)).mode)
        except KeyError:
            modes.add("max")
    return modes != {"min"}


def probe_maps_by_control(df: pd.DataFrame, summary: pd.DataFrame, client: MlflowClient,
                          task: str) -> dict[str, dict]:
    """One run per control for the activation-map figure: the lowest seed of the best
    pretrained cell, and of each other control's first cell."""
    out: dict[str, dict] = {}
    done = best_hparams(df)
    done = done[(done["status"] == "FINISHED") & (done["task"] == task)]
    cells = summary[(summary["task"] == task) & (summary["n"] > 0)]
    higher = summary.attrs.get("higher", True)
    for control in list_controls():
        these = cells[cells["control"] == control]
        if these.empty:
            continue
        cell = these.sort_values("mean", ascending=not higher).iloc[0]
        runs = done[(done["control"] == control) & (done["family"] == cell["family"])
                    & (done["size"] == cell["size"]) & (done["layers"] == cell["layers"])]
        for run_id in runs.sort_values("seed")["run_id"]:
            if (maps := _load_maps(client, run_id)) is not None:
                swept = get_control(control).layers == "each"
                label = f"{control} L{cell['layers']}" if swept else control
                out[label] = maps
                break
    return out


def _is_image(maps: dict) -> bool:
    if not maps.get("inputs"):  # multi-part inputs are not stored
        return False
    first = maps["inputs"][0]
    return isinstance(first, list) and isinstance(first[0], list) and not isinstance(
        first[0][0], list) and len(first) == len(first[0]) > 4


def _load_maps(client: MlflowClient, run_id: str) -> dict | None:
    with tempfile.TemporaryDirectory() as d:
        try:
            path = client.download_artifacts(run_id, "analysis/probe_maps.json", d)
        except (MlflowException, OSError):  # the run failed before its first epoch
            return None
        return json.loads(Path(path).read_text())


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


# Differences and their intervals: signed, at the findings' precision (``+0.008``).
SIGNED_COLUMNS = ("difference", "ci_low", "ci_high", "delta", "ci_lo", "ci_hi")


def number_text(value: float, signed: bool = False) -> str:
    """A table's number as the findings print it: 3 decimals (signed for a difference), 3
    significant digits for what 3 decimals would show as 0 or too long (FLOPs, bytes)."""
    if pd.isna(value):
        return ""
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    if signed and abs(value) < 1e-3:
        return f"{value:+.3f}"  # a difference inside the last decimal: +0.000 / -0.000
    return f"{value:.3g}"


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its float columns as text (``number_text``): the HTML report never
    prints a raw float (``8.333325e-03``); the CSV files keep the numbers."""
    out = table.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            signed = str(col) in SIGNED_COLUMNS
            out[col] = [number_text(v, signed) for v in out[col]]
    return out


def write_html(path: Path, title: str, intro: str, named_tables: dict[str, pd.DataFrame],
               figures: list[Path | str], findings_html: str = "",
               left_out: dict[str, str] | None = None) -> Path:
    """One file, nothing external: the findings first, then tables as HTML, figures inlined
    as base64 PNG; a table or figure left out (a ``str`` among the figures) is one line."""
    parts = [f"<h1>{html.escape(title)}</h1>", findings_html, f"<p>{html.escape(intro)}</p>"]
    for name, table in named_tables.items():
        if name in (left_out or {}):
            parts.append(f"<p class='left-out'>{html.escape(left_out[name])}</p>")
        elif not table.empty:
            parts.append(f"<h2>{html.escape(TABLES.get(name, name))}</h2>")
            parts.append("<div class='table'>" + shown(table).to_html(
                index=False, classes="ablation", na_rep="", border=0) + "</div>")
    parts.append("<h2>Figures</h2>")
    parts += [_image(f) if isinstance(f, Path) else f"<p class='left-out'>{html.escape(f)}</p>"
              for f in figures]
    style = ("body{font-family:sans-serif;margin:2em auto;padding:0 2em;max-width:1200px;"
             "line-height:1.45}"
             # a wide table scrolls inside its own box (the page does not), header kept in view
             "div.table{overflow:auto;max-height:70vh;margin-bottom:1.5em;"
             "border:1px solid #ddd}"
             "table.ablation{border-collapse:collapse;font-size:13px}"
             "table.ablation td,table.ablation th{border:1px solid #ccc;padding:3px 8px;"
             "white-space:nowrap}"
             "table.ablation th{background:#eee;position:sticky;top:0}"
             "table.ablation td{font-variant-numeric:tabular-nums}"
             "img{max-width:100%}figure{margin:1em 0}"
             "p.left-out{color:#555;font-style:italic}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>"
                    f"{html.escape(title)}</title><style>{style}</style></head><body>"
                    + "\n".join(parts) + "</body></html>")
    return path


def write_report(df: pd.DataFrame, out_dir: str | Path, metric: str = "val_acc",
                 control: str = "none", layer: str = "last",
                 client: MlflowClient | None = None) -> Report:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(df, metric, control, _higher_is_better(df))
    end = tables.at_end(summary)  # tables 1-3 and their figures: the paper's method
    named = {
        "by_layer": tables.by_layer(end),
        "by_size": tables.by_size(end, layer),
        "by_control": tables.by_control(end, layer),
        "by_position": tables.by_position(summary),
        "filtering": tables.filtering_table(summary),
        "cost": tables.cost_table(summary),
        "similarity": rectifier.similarity_vs_gain(summary),
        "coherence": rectifier.coherence_table(summary),
        "prescreen": (rectifier.prescreen_table(client, df.attrs.get("parent_run_ids", []))
                      if client is not None else pd.DataFrame()),
    }
    skip = findings.left_out(end, layer)  # nothing to say with this data: one line each
    histories = convergence.load_histories(client, df, metric) if client is not None else None
    tested = claims.evaluate(df, metric, summary.attrs["higher"], histories)
    files: list[Path] = []
    legend = (f"mean ± std over seeds; Δ = paired difference against '{control}' (same task "
              "and seed) with its interval, labelled by the number of pairs n: '95% CI' "
              f"(bootstrap) with n >= {MIN_PAIRS}, 'range of 2' (the two differences) with 2, "
              "none with 1; * = the 95% CI excludes zero.")
    md = [f"# Ablation report: final {metric}\n", *findings.markdown_section(tested),
          legend + "\n"]
    for name, table in named.items():  # every table's CSV, those left out of the page too
        if name in skip:
            md += [f"_{skip[name]}_\n"]
        elif not table.empty:
            md += [f"## {TABLES[name]}\n", table.to_markdown(index=False), ""]
        if not table.empty:
            table.to_csv(out / f"{name}.csv", index=False)
            files.append(out / f"{name}.csv")
    beside = paper.beside(summary, metric)  # the paper's rows: matches, else references
    md += paper.markdown_section(beside, summary)
    md += claims.markdown_section(tested)
    tested.to_csv(out / "claims.csv", index=False)
    files.append(out / "claims.csv")
    summary.to_csv(out / "summary.csv", index=False)
    df.to_csv(out / "runs.csv", index=False)
    beside.to_csv(out / "paper.csv", index=False)
    files += [out / "ablation.md", out / "summary.csv", out / "runs.csv", out / "paper.csv"]

    figures: list[Path | str] = [  # a figure, or the line saying why it is left out
        skip.get("metric_vs_layer") or plots.metric_vs_layer(end, out / "metric_vs_layer.png")]
    if not tables.fixed_layer(end, layer).empty or "metric_vs_size" in skip:
        figures.append(skip.get("metric_vs_size") or plots.metric_vs_size(
            end, out / "metric_vs_size.png", layer))
    if end["control"].isin(tables.layer_controls()).any():
        figures.append(skip.get("layer_size_heatmap") or plots.layer_size_heatmap(
            end, out / "layer_size_heatmap.png"))
    if not named["by_position"].empty:
        figures.append(plots.metric_vs_position(summary, out / "metric_vs_position.png"))
    if "conc_act_gain" in summary:
        figures.append(plots.gain_vs_concentration(summary, out / "gain_vs_concentration.png"))
    if not named["similarity"].empty:
        figures.append(plots.similarity_vs_gain(summary, named["similarity"],
                                                out / "similarity_vs_gain.png"))
    if client is not None:
        for task in summary["task"].unique():
            maps = probe_maps_by_control(df, summary, client, task)
            if not maps:
                continue
            draw = (plots.activation_maps if _is_image(next(iter(maps.values())))
                    else plots.token_activation_strips)  # image grid, or tokens in a row
            figures.append(draw(maps, out / f"activation_maps_{task}.png"))
    drawn = [f for f in figures if isinstance(f, Path)]
    md += ["## Figures\n", "PNG files beside this one, inlined in report.html: "
           + (", ".join(f.name for f in drawn) or "none") + ".\n",
           *(f"_{f}_\n" for f in figures if isinstance(f, str))]
    (out / "ablation.md").write_text("\n".join(md) + "\n")
    experiments = ", ".join(sorted(df["experiment"].unique())) if "experiment" in df else ""
    done = int((df["status"] == "FINISHED").sum())
    intro = (f"Experiments: {experiments}. {len(df)} trials, {done} finished, "
             f"{len(df) - done} not. " + legend)
    files.append(write_html(out / "report.html", f"Ablation report: final {metric}", intro,
                            {**named, "claims": claims.display(tested)}, figures,
                            findings.html_section(tested), skip))
    files += drawn
    headline = named["by_layer"] if not named["by_layer"].empty else named["by_control"]
    return Report(headline, summary, named, files, claims=tested, metric=metric,
                  higher_is_better=_higher_is_better(df))


def build_report(
    tracking_uri: str, experiments: str | list[str], out_dir: str | Path,
    parent_run_id: str | None = None, log_to: str | list[str] | None = None,
    tasks: list[str] | None = None, families: list[str] | None = None,
    control: str = "none", layer: str = "last", metric: str | None = None,
    log_path: str = "report",
) -> Report:
    """Report on the experiments (or one sweep run); its files logged to each run of
    ``log_to`` (run ids; none: written to ``out_dir`` only) under ``log_path``."""
    df = load_runs(tracking_uri, experiments, parent_run_id)
    if df.empty:
        raise ReportError(f"experiment(s) {experiments!r}: the sweep has no trial runs")
    df = _filter(df, "task", tasks)
    df = _filter(df, "family", families, keep_empty=True)  # 'none' has no family
    if control not in reference_controls():
        raise ReportError(f"unknown control {control!r}; valid: {', '.join(reference_controls())}")
    metric = metric or _task_metric(df)
    if metric not in df:
        valid = [c for c in df.columns if df[c].dtype.kind == "f" and c not in ("seed",)]
        raise ReportError(f"unknown metric {metric!r}; valid: {', '.join(valid)}")
    client = MlflowClient(tracking_uri)
    report = write_report(df, out_dir, metric, control, layer, client)
    for run_id in [log_to] if isinstance(log_to, str) else (log_to or []):
        for f in report.files:
            client.log_artifact(run_id, str(f), artifact_path=log_path)
    return report


def _task_metric(df: pd.DataFrame) -> str:
    try:
        return task_entry(task_of_label(df["task"].iloc[0])).metric
    except KeyError:
        return "val_acc"


def _filter(df: pd.DataFrame, column: str, wanted: list[str] | None,
            keep_empty: bool = False) -> pd.DataFrame:
    if not wanted:
        return df
    valid = sorted(v for v in df[column].unique() if v)
    for w in wanted:
        if w not in valid:
            raise ReportError(f"unknown {column} {w!r}; valid: {', '.join(valid)}")
    keep = df[column].isin(wanted) | (df[column].eq("") if keep_empty else False)
    return df[keep]
