"""Issue 30's judge, end to end through the CLI, in two sweeps (each sweep starts Ray: the
suite's time is counted): a sweep of the block at the end (a store from before the axis),
then 2 positions x 2 layers of the same task with ``--prescreen 3``, both with ``--epochs
auto:4``. Only the new places run; every run carries the position, the probe's measures and
Bai et al.'s, and stopped where the plateau rule said; the report has Table D, its figure,
the position claim and the prescreen's ranking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from experiments.plateau import should_stop
from tests.conftest import assert_figure

ROOT = Path(__file__).resolve().parents[1]


def sweep(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--layers", "4", "5",
         "--controls", "pretrained", "none", "--seeds", "0", "--epochs", "auto:4", "--quiet",
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--storage", str(tmp_path / "ray"), "--experiment", "pos", *argv],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_positions_by_two_layers_through_the_cli(tmp_path):
    sweep(tmp_path)  # before the axis: the block at the end
    proc = sweep(tmp_path, "--positions", "end", "start", "--prescreen", "3")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = tmp_path / "lmblocks-reports" / "pos"
    ranking = pd.read_csv(report / "prescreen.csv", keep_default_na=False)
    assert len(ranking) == 4 and ranking["kept"].sum() == 3
    out = ranking[~ranking["kept"]].iloc[0]
    assert out["reason"].startswith("screened out: rank 4 of 4, initial CKA")
    # the end cells and none ran in the first sweep: found finished, not rerun; of the
    # start cells only the prescreen's kept one is planned
    kept_start = int((ranking["kept"] & (ranking["position"] == "start")).sum())
    kept_end = int((ranking["kept"] & (ranking["position"] == "end")).sum())
    assert f"{1 + kept_end} of {1 + kept_end + kept_start} trials already FINISHED" in proc.stdout
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["pos"],
                              filter_string="tags.`lmblocks.kind` = 'trial'")
    assert len(runs) == 3 + kept_start and (runs["status"] == "FINISHED").all()  # once each
    placed = runs[runs["params.control"] == "pretrained"]
    assert sorted(set(placed["params.position"])) == ["end", "start"]
    client = MlflowClient(uri)
    for _, row in placed.iterrows():  # every new metric on every run with a block
        for name in ("block_cka_init", "block_cka", "grad_coherence_init", "grad_coherence"):
            assert pd.notna(row[f"metrics.{name}"]), (row["params.position"], name)
        assert 0 <= row["metrics.block_cka_init"] <= 1
        assert 0 < row["metrics.conc_act_after"] < 1
        # the prescreen ranked it by the number the trial itself logged before its first step
        cell = ranking[(ranking["layers"].astype(str) == row["params.layers"])
                       & (ranking["position"] == row["params.position"])].iloc[0]
        assert cell["block_cka_init"] == pytest.approx(row["metrics.block_cka_init"], rel=1e-4)
    for _, row in runs.iterrows():  # --epochs auto:4: stopped where the rule first said so
        acc = [m.value for m in sorted(client.get_metric_history(row["run_id"], "val_acc"),
                                       key=lambda m: m.step)]
        loss = [m.value for m in sorted(client.get_metric_history(row["run_id"], "train_loss"),
                                        key=lambda m: m.step)]
        first = next((n for n in range(1, 5) if should_stop(
            acc[:n], True, loss[:n], row["metrics.chance_loss"])), 4)
        assert len(acc) == first and row["params.auto_epochs"] == "True"
    none = runs[runs["params.control"] == "none"].iloc[0]
    assert pd.notna(none["metrics.grad_coherence"]) and pd.isna(
        none.get("metrics.block_cka", float("nan")))

    table = pd.read_csv(report / "by_position.csv", keep_default_na=False)
    assert list(table.columns) == ["task", "family", "size", "layers", "control", "no block",
                                   "end", "start"]
    assert table["end"].str.contains("Δ").all()
    assert_figure(report / "metric_vs_position.png")
    assert "position" in pd.read_csv(report / "coherence.csv").columns
    assert "claim: block position: end > middle > start (digits" in proc.stdout \
        or kept_start == 0
    md = (report / "ablation.md").read_text()
    assert "Table D" in md and "--prescreen" in md
