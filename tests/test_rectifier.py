"""Bai et al.'s findings across a sweep's cells (``results/rectifier.py``): the rank
correlation of initial similarity with the gain, and coherence with vs without the block,
in the report's tables and figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from results.build import build_report
from results.rectifier import coherence_table, similarity_vs_gain, spearman, spearman_interval
from tests.test_report import log_sweep


def test_spearman_is_scipy_s_and_its_interval_holds_it():
    g = np.random.default_rng(0)
    x = g.normal(size=30)
    y = x + g.normal(size=30)
    y[3] = y[4]  # a tie
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    lo, hi = spearman_interval(x, y, samples=2000)
    assert lo < spearman(x, y) < hi and -1 <= lo and hi <= 1
    assert spearman_interval(x, y, samples=2000) == (lo, hi)  # seeded: the same report


def _summary(rows: list[dict]) -> pd.DataFrame:
    s = pd.DataFrame(rows)
    s["position"] = s.get("position", pd.Series("end", index=s.index)).fillna("end")
    s.attrs.update(control="none", higher=True)
    return s


def test_too_few_cells_say_so_and_coherence_is_paired_with_no_block():
    cell = {"family": "minilm", "size": "l6", "control": "pretrained", "n": 3, "task": "digits"}
    summary = _summary([
        {**cell, "family": "", "size": "", "layers": "", "control": "none", "delta": np.nan,
         "block_cka_init": np.nan, "grad_coherence": 0.10},
        {**cell, "layers": "4", "delta": 0.02, "block_cka_init": 0.5, "grad_coherence": 0.25},
        {**cell, "layers": "5", "delta": 0.03, "block_cka_init": 0.7, "grad_coherence": 0.05},
    ])
    rho = similarity_vs_gain(summary)
    assert rho["cells"].tolist() == [2] and np.isnan(rho["spearman_rho"].iloc[0])
    assert rho["note"].iloc[0] == "needs 3+ cells with a block"
    coh = coherence_table(summary)
    assert coh["coherence_gain"].tolist()[1:] == pytest.approx([0.15, -0.05])
    assert np.isnan(coh["coherence_gain"].iloc[0])  # no block: nothing to compare


def test_the_report_has_the_correlation_the_coherence_table_and_the_figure(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = [{"control": "none", "task": "digits", "seed": s, "val_acc": 0.5 + s / 100,
             "grad_coherence": 0.1, "grad_coherence_init": 0.0} for s in range(3)]
    for layer in range(4):  # the more similar the block at first, the larger its gain
        rows += [{"family": "minilm", "size": "l6", "layers": str(layer), "task": "digits",
                  "control": "pretrained", "seed": s, "val_acc": 0.5 + s / 100 + layer / 50,
                  "block_cka_init": 0.2 + layer / 10, "block_cka": 0.5,
                  "grad_coherence": 0.2, "grad_coherence_init": 0.1} for s in range(3)]
    log_sweep(uri, "bai", rows)
    report = build_report(uri, "bai", tmp_path / "out")
    sim = report.tables["similarity"]
    assert sim[["task", "cells", "spearman_rho"]].values.tolist() == [["digits", 4, 1.0]]
    coh = report.tables["coherence"]
    gains = coh.loc[coh["control"] == "pretrained", "coherence_gain"]
    assert gains.tolist() == pytest.approx([0.1] * 4)
    for name in ("similarity.csv", "coherence.csv", "similarity_vs_gain.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert "Spearman" in (tmp_path / "out" / "ablation.md").read_text()
