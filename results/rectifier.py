"""Bai et al.'s findings, measured across a sweep's cells (the measures themselves:
``experiments/block_measures.py``, on every trial):

- does the initial similarity predict the gain? Spearman's rank correlation, over the cells
  with an inserted module, between the block's CKA with its adjacent encoder block before
  training (``block_cka_init``) and the cell's paired gain over no block (``delta``), with a
  bootstrap interval (cells resampled with replacement);
- is the frozen block a gradient coherence rectifier? Each cell's per-sample gradient
  coherence, at initialisation and at the end, next to the no-block cell's of the same task.

Where a sweep has too few cells for a correlation (3), the table says so instead of a number.

And where a sweep ran ``--prescreen K``: the ranking it trained by (``prescreen.json`` on the
sweep run), each cell kept or screened out and why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from results.stats import BOOTSTRAP_SAMPLES, CONFIDENCE, interval_label, with_positions

MIN_CELLS = 3  # a rank correlation of fewer cells is not one
MEASURES = ("block_cka_init", "block_cka", "grad_coherence_init", "grad_coherence")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties take their mean rank)."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_interval(x: np.ndarray, y: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                      confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of rho over cells resampled with replacement (seeded:
    the same report every time)."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(x), size=(samples, len(x)))
    rx, ry = rankdata(x[picks], axis=1), rankdata(y[picks], axis=1)  # ties: mean ranks
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of tied values: no rho
        rhos = (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    rhos = rhos[np.isfinite(rhos)]
    if not len(rhos):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(rhos, tail)), float(np.percentile(rhos, 100 - tail))


def _with_block(summary: pd.DataFrame) -> pd.DataFrame:
    control = summary.attrs.get("control", "none")
    if "block_cka_init" not in summary:
        return summary.iloc[:0]
    return summary[(summary["control"] != control)].dropna(subset=["block_cka_init", "delta"])


def similarity_vs_gain(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task (and all tasks together when there are several): cells, rho, its interval."""
    cells = _with_block(summary)
    groups = [(task, g) for task, g in cells.groupby("task")]
    if len(groups) > 1:
        groups.append(("all tasks", cells))
    rows = []
    for task, g in groups:
        x, y = g["block_cka_init"].to_numpy(float), g["delta"].to_numpy(float)
        row = {"task": task, "cells": len(g), "spearman_rho": float("nan"),
               "ci_lo": float("nan"), "ci_hi": float("nan"), "note": ""}
        if len(g) < MIN_CELLS:
            row["note"] = f"needs {MIN_CELLS}+ cells with a block"
        else:
            row["spearman_rho"] = spearman(x, y)
            row["ci_lo"], row["ci_hi"] = spearman_interval(x, y)
            row["note"] = interval_label(len(g)) or ""
        rows.append(row)
    return pd.DataFrame(rows).round(3) if rows else pd.DataFrame()


def coherence_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per cell: its measures, and its final coherence minus the no-block cell's (same
    task): positive where the block made the per-sample gradients agree more."""
    if "grad_coherence" not in summary:
        return pd.DataFrame()
    summary = with_positions(summary)
    control = summary.attrs.get("control", "none")
    none = summary[summary["control"] == control].set_index("task")["grad_coherence"]
    none = none[~none.index.duplicated()]
    t = summary[["task", "family", "size", "layers", "position", "control", "n", "delta",
                 *[m for m in MEASURES if m in summary]]].copy()
    t["grad_coherence_no_block"] = t["task"].map(none)
    t["coherence_gain"] = t["grad_coherence"] - t["grad_coherence_no_block"]
    t.loc[t["control"] == control, "coherence_gain"] = np.nan
    return t.round(4)


PRESCREEN_ARTIFACT = "prescreen.json"  # orchestrator.prescreen.ARTIFACT


def prescreen_table(client, parent_run_ids: list[str]) -> pd.DataFrame:
    """The prescreen's ranking logged on the sweep runs (empty: none ran one)."""
    import json
    import tempfile

    frames = []
    for run_id in parent_run_ids:
        if not any(a.path == PRESCREEN_ARTIFACT for a in client.list_artifacts(run_id)):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, PRESCREEN_ARTIFACT, tmp)
            with open(path) as f:
                frames.append(pd.DataFrame(json.load(f)["rows"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
