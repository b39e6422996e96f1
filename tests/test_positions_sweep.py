"""Issue 30's judge, end to end through the CLI: a sweep of 2 positions x 2 layers on an
embedded task, after a sweep of the same cells at the end alone (a store from before the
axis): only the new places run; every run carries the position, the probe's measures and
Bai et al.'s; the report has Table D, its figure and the position claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import assert_figure

ROOT = Path(__file__).resolve().parents[1]


def sweep(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--layers", "4", "5",
         "--controls", "pretrained", "none", "--seeds", "0", "--quiet",
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--storage", str(tmp_path / "ray"), "--experiment", "pos", *argv],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_positions_by_two_layers_through_the_cli(tmp_path):
    sweep(tmp_path)  # before the axis: the block at the end
    proc = sweep(tmp_path, "--positions", "end", "start")
    assert "3 of 5 trials already FINISHED" in proc.stdout  # the end cells and none: not rerun
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["pos"],
                              filter_string="tags.`lmblocks.kind` = 'trial'")
    assert len(runs) == 5 and (runs["status"] == "FINISHED").all()  # each cell ran once
    placed = runs[runs["params.control"] == "pretrained"]
    assert sorted(zip(placed["params.layers"], placed["params.position"], strict=True)) == [
        ("4", "end"), ("4", "start"), ("5", "end"), ("5", "start")]
    for _, row in placed.iterrows():  # every new metric on every run with a block
        for name in ("block_cka_init", "block_cka", "grad_coherence_init", "grad_coherence"):
            assert pd.notna(row[f"metrics.{name}"]), (row["params.position"], name)
        assert 0 <= row["metrics.block_cka_init"] <= 1
        assert 0 < row["metrics.conc_act_after"] < 1
    none = runs[runs["params.control"] == "none"].iloc[0]
    assert pd.notna(none["metrics.grad_coherence"]) and pd.isna(
        none.get("metrics.block_cka", float("nan")))
    # the start cells' probe reads the block's input, the token embedding: not the end's
    at = placed.set_index(["params.layers", "params.position"])
    assert at.loc[("5", "start"), "metrics.conc_act_before"] != at.loc[
        ("5", "end"), "metrics.conc_act_before"]

    report = tmp_path / "lmblocks-reports" / "pos"
    table = pd.read_csv(report / "by_position.csv", keep_default_na=False)
    assert list(table.columns) == ["task", "family", "size", "layers", "control", "no block",
                                   "end", "start"]
    assert sorted(table["layers"].astype(str)) == ["4", "5"]
    assert table["end"].str.contains("Δ").all() and table["start"].str.contains("Δ").all()
    assert_figure(report / "metric_vs_position.png")
    for name in ("similarity", "coherence"):
        assert "position" in pd.read_csv(report / f"{name}.csv").columns or name == "similarity"
    assert "claim: block position: end > middle > start (digits, minilm/l6 L5, end vs start)" \
        in proc.stdout
    assert "Table D" in (report / "ablation.md").read_text()


@pytest.mark.slow
def test_the_prescreen_trains_the_top_cell_and_the_report_names_the_others(tmp_path):
    proc = sweep(tmp_path, "--positions", "end", "start", "--prescreen", "1")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["pos"],
                              filter_string="tags.`lmblocks.kind` = 'trial'")
    assert sorted(runs["params.control"]) == ["none", "pretrained"]
    report = tmp_path / "lmblocks-reports" / "pos"
    table = pd.read_csv(report / "prescreen.csv", keep_default_na=False)
    assert len(table) == 4 and table["kept"].sum() == 1
    kept = table[table["kept"]].iloc[0]
    trained = runs[runs["params.control"] == "pretrained"].iloc[0]
    assert (str(kept["layers"]), kept["position"]) == (
        trained["params.layers"], trained["params.position"])
    # the number it was ranked by is the trial's own initial similarity
    assert kept["block_cka_init"] == pytest.approx(trained["metrics.block_cka_init"], rel=1e-4)
    assert table.loc[~table["kept"], "reason"].str.startswith("screened out: rank").all()
    assert "--prescreen" in (report / "ablation.md").read_text()
    assert proc.returncode == 0
