"""The report is rebuilt from MLflow alone: tidy runs, mean/std over seeds, paired delta."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from results.report import build_report, load_runs, main, summarize


def log_sweep(uri: str, experiment: str, rows: list[dict]) -> str:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    exp = found.experiment_id if found else client.create_experiment(experiment)
    parent = client.create_run(exp, tags={"lmblocks.kind": "sweep"}).info.run_id
    for row in rows:
        key = "|".join(str(row.get(k, ""))
                       for k in ("family", "size", "layers", "control", "seed", "lr"))
        tags = {"mlflow.parentRunId": parent, "lmblocks.kind": "trial", "lmblocks.trial_key": key}
        run = client.create_run(exp, tags=tags).info.run_id
        for k in ("family", "size", "layers", "task", "control", "seed", "lr"):
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


def test_experiment_wide_by_default_one_run_per_cell(uri, tmp_path, capsys):
    first = log_sweep(uri, "exp", ROWS[:2] + ROWS[-1:])  # the layer-3 seed-1 cell FAILED ...
    rerun = {**ROWS[-1], "status": "FINISHED", "val_acc": 0.65}
    second = log_sweep(uri, "exp", [rerun, ROWS[2]])  # ... and a later sweep finished it
    df = load_runs(uri, "exp")
    assert df.attrs["parent_run_id"] == second
    assert len(df) == 4 and (df["status"] == "FINISHED").all()
    assert len(load_runs(uri, "exp", parent_run_id=first)) == 3  # one invocation only
    assert main(["--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    report = build_report(uri, "exp", tmp_path / "x")
    cells = report.summary.set_index(["control", "layers"])
    assert cells.loc[("pretrained", "3"), "failed"] == 0


def test_hyperparameter_search_counts_the_best_trial_of_each_cell_and_seed(uri, tmp_path):
    cell = {"family": "opt", "size": "125m", "layers": "11", "task": "digits",
            "control": "pretrained"}
    searched = [  # seed 0: three lr samples, one failed; seed 1: two samples
        {**cell, "seed": 0, "lr": 1e-3, "val_acc": 0.70},
        {**cell, "seed": 0, "lr": 3e-3, "val_acc": 0.80},
        {**cell, "seed": 0, "lr": 1e-2, "status": "FAILED"},
        {**cell, "seed": 1, "lr": 1e-3, "val_acc": 0.60},
        {**cell, "seed": 1, "lr": 3e-4, "val_acc": 0.90},
    ]
    log_sweep(uri, "hp", ROWS[:2] + searched)
    df = load_runs(uri, "hp")
    assert len(df) == 7 and set(df["lr"].dropna()) >= {"0.001", "0.003", "0.01", "0.0003"}
    s = summarize(df).set_index(["control", "layers"]).loc[("pretrained", "11")]
    assert s["mean"] == pytest.approx(0.85)  # best of seed 0 (0.80) and of seed 1 (0.90)
    assert s["n"] == 2 and s["failed"] == 0 and s["hparam_trials"] == 3
    assert s["delta_vs_none"] == pytest.approx(((0.8 - 0.5) + (0.9 - 0.6)) / 2)
    report = build_report(uri, "hp", tmp_path / "r")
    assert "[best of 3]" in (tmp_path / "r" / "ablation.md").read_text()
    assert report.summary["hparam_trials"].min() == 1  # the none control was not searched
