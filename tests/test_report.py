"""The report is rebuilt from MLflow alone: tidy runs, mean/std over seeds, paired delta."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from results.report import build_report, load_runs, main, summarize


def log_sweep(uri: str, experiment: str, rows: list[dict]) -> str:
    client = MlflowClient(uri)
    exp = client.create_experiment(experiment)
    parent = client.create_run(exp, tags={"lmblocks.kind": "sweep"}).info.run_id
    for row in rows:
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
        for k in ("family", "size", "layers", "task", "control", "seed"):
            client.log_param(run, k, row.get(k, ""))
        if "val_acc" in row:
            client.log_metric(run, "val_acc", 0.0, step=1)
            client.log_metric(run, "val_acc", row["val_acc"], step=2)  # final value wins
        client.set_terminated(run, row.get("status", "FINISHED"))
    client.set_terminated(parent, "FINISHED")
    return parent


ROWS = [
    {"control": "none", "task": "digits", "seed": 0, "val_acc": 0.5},
    {"control": "none", "task": "digits", "seed": 1, "val_acc": 0.6},
    *[
        {"family": "opt", "size": "125m", "layers": "11", "task": "digits",
         "control": "pretrained", "seed": s, "val_acc": v}
        for s, v in [(0, 0.7), (1, 0.9)]
    ],
    {"family": "opt", "size": "125m", "layers": "3", "task": "digits", "control": "pretrained",
     "seed": 0, "val_acc": 0.55},
    {"family": "opt", "size": "125m", "layers": "3", "task": "digits", "control": "pretrained",
     "seed": 1, "status": "FAILED"},
]


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_summary_mean_std_and_paired_delta(uri):
    log_sweep(uri, "exp", ROWS)
    df = load_runs(uri, "exp")
    assert len(df) == len(ROWS)
    s = summarize(df).set_index(["control", "layers"])
    last = s.loc[("pretrained", "11")]
    assert last["mean"] == pytest.approx(0.8)
    assert last["std"] == pytest.approx(math.sqrt(0.02))
    assert last["n"] == 2 and last["failed"] == 0
    assert last["delta_vs_none"] == pytest.approx(0.25)  # (0.7-0.5 + 0.9-0.6) / 2
    third = s.loc[("pretrained", "3")]
    assert third["n"] == 1 and third["failed"] == 1
    assert third["delta_vs_none"] == pytest.approx(0.05)


def test_report_files_logged_to_the_parent_run(uri, tmp_path, capsys):
    parent = log_sweep(uri, "exp", ROWS)
    assert main(["--experiment", "exp", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "0.800 ± 0.141 (Δ +0.250)" in out and "[1 failed]" in out
    for name in ("ablation.md", "ablation.csv", "runs.csv", "metric_vs_layer.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "report")}
    assert "report/metric_vs_layer.png" in logged and "report/ablation.md" in logged
    assert (tmp_path / "r" / "metric_vs_layer.png").read_bytes()[:4] == b"\x89PNG"


def test_latest_sweep_is_the_default_and_unknown_experiment_exits_2(uri, tmp_path, capsys):
    log_sweep(uri, "exp", ROWS[:2])
    newer = log_sweep(uri + "", "exp2", ROWS[:1])
    assert load_runs(uri, "exp2").attrs["parent_run_id"] == newer
    assert main(["--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    report = build_report(uri, "exp", tmp_path / "x", log_to_parent=False)
    assert len(report.summary) == 1
