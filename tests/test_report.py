"""The report is rebuilt from MLflow alone: tidy runs, statistics over seeds, paired
differences with bootstrap intervals, the paper's tables, figures and one HTML page."""

from __future__ import annotations

import json
import math
import re

import pytest
from mlflow.tracking import MlflowClient

from experiments.cost import COST_METRICS, COST_PARAMS
from results.build import build_report, load_runs
from results.report import main
from results.stats import bootstrap_ci, summarize
from results.stores import local_store_path
from tests.conftest import assert_figure


def keep_figure(monkeypatch) -> dict:
    """The figure the next ``results.plots`` call saves, kept (``["fig"]``) for its axes."""
    from results import plots

    drawn: dict = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig)
                        and save(fig, path))
    return drawn


def log_sweep(uri: str, experiment: str, rows: list[dict]) -> str:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    # artifacts beside the store (MLflow's default is ./mlruns under the working directory)
    artifacts = (local_store_path(uri).parent / "artifacts" / experiment).as_uri()
    exp = found.experiment_id if found else client.create_experiment(experiment, artifacts)
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
        for k, v in row.items():
            if k.startswith(("conc_", "block_cka", "grad_coherence")) or k in COST_METRICS:
                client.log_metric(run, k, v, step=2)
            elif k in COST_PARAMS:
                client.log_param(run, k, v)
        client.set_terminated(run, row.get("status", "FINISHED"), end_time=row.get("end_ms"))
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
    assert last["delta"] == pytest.approx(0.25)  # (0.7-0.5 + 0.9-0.6) / 2
    third = s.loc[("pretrained", "3")]
    assert third["n"] == 1 and third["failed"] == 1
    assert third["delta"] == pytest.approx(0.05)


def test_report_files_logged_to_the_parent_run_only_with_log(uri, tmp_path, capsys):
    parent = log_sweep(uri, "exp", ROWS)
    client = MlflowClient(uri)
    assert main(["--experiment", "exp", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    assert client.list_artifacts(parent, "report") == []  # read-only without --log
    capsys.readouterr()
    assert main(["--experiment", "exp", "--tracking-uri", uri, "--out", str(tmp_path / "r"),
                 "--log"]) == 0
    out = capsys.readouterr().out
    # two seeds: the two differences' range, labelled as such, too few to call significant
    assert "0.800 ± 0.141 (Δ +0.250, range of 2 [+0.200, +0.300])" in out and "[1 failed]" in out
    assert "0.550 (Δ +0.050) [1 failed]" in out  # one pair: no interval
    for name in ("ablation.md", "by_layer.csv", "by_size.csv", "summary.csv", "runs.csv",
                 "report.html", "metric_vs_layer.png", "layer_size_heatmap.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    assert not (tmp_path / "r" / "metric_vs_size.png").exists()  # one size: left out
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/metric_vs_layer.png" in logged and "report/ablation.md" in logged
    assert f"logged to MLflow run(s) {parent} under report/" in out
    assert (tmp_path / "r" / "metric_vs_layer.png").read_bytes()[:4] == b"\x89PNG"


def test_a_filtered_report_has_its_own_folder_and_artifact_path(uri, tmp_path, capsys,
                                                                monkeypatch):
    parent = log_sweep(uri, "exp", ROWS)
    monkeypatch.chdir(tmp_path)
    assert main(["exp", "--tracking-uri", uri, "--log"]) == 0
    full = tmp_path / "lmblocks-reports" / "exp"
    before = {f.name: f.read_bytes() for f in full.iterdir()}
    assert main(["exp", "--tracking-uri", uri, "--family", "opt", "--layer", "3", "--log"]) == 0
    narrowed = tmp_path / "lmblocks-reports" / "exp,family=opt,layer=3"
    assert (narrowed / "report.html").is_file()
    assert {f.name: f.read_bytes() for f in full.iterdir()} == before  # not overwritten
    client = MlflowClient(uri)
    top = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.html" in top and "report/family=opt,layer=3" in top
    inner = {a.path for a in client.list_artifacts(parent, "report/family=opt,layer=3")}
    assert "report/family=opt,layer=3/report.html" in inner


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
    assert s["delta"] == pytest.approx(((0.8 - 0.5) + (0.9 - 0.6)) / 2)
    report = build_report(uri, "hp", tmp_path / "r")
    assert "[best of 3]" in (tmp_path / "r" / "ablation.md").read_text()
    assert report.summary["hparam_trials"].min() == 1  # the none control was not searched


def test_cost_table_per_cell_next_to_the_metric(uri, tmp_path):
    """Constants come from params (text in MLflow), throughput from the last epoch's metrics,
    trial-hours from each run's wall time; per cell, means over its finished seeds."""
    import time

    now = int(time.time() * 1000)
    cost = {"frozen_params": 85_000_000, "trainable_params": 1_500_000,
            "gflops_forward_per_sample": 4.5, "gflops_train_step_per_sample": 13.5,
            "device_name": "NVIDIA H100 80GB HBM3",
            "data_wait_share": 0.02, "peak_memory_bytes": 3 * 2**30, "mfu": 0.4}
    rows = [{"control": "none", "task": "digits", "seed": s, "val_acc": 0.5,
             "gflops_forward_per_sample": 4.0, "gflops_train_step_per_sample": 12.0,
             "frozen_params": 0, "trainable_params": 1_400_000, "samples_per_s": 1000.0}
            for s in (0, 1)]
    rows += [opt_row("125m", "11", s, 0.7, **cost, samples_per_s=800.0 + 200 * s,
                     end_ms=now + 7_200_000) for s in (0, 1)]
    log_sweep(uri, "cost", rows)
    report = build_report(uri, "cost", tmp_path / "r")
    table = report.tables["cost"].set_index("control")
    pre = table.loc["pretrained"]
    assert (pre["frozen_M"], pre["trainable_M"]) == (85.0, 1.5)
    assert (pre["gflops_fwd"], pre["gflops_step"]) == (4.5, 13.5)
    assert pre["samples_per_s"] == 900.0 and pre["mfu"] == 0.4 and pre["mean"] == 0.7
    assert pre["trial_hours"] == pytest.approx(2.0, abs=0.01)  # ended 2 h after it started
    assert pre["total_hours"] == pytest.approx(4.0, abs=0.02)  # two seeds
    assert table.loc["none", "frozen_M"] == 0 and table.loc["none", "samples_per_s"] == 1000.0
    assert "Cost per cell" in (tmp_path / "r" / "ablation.md").read_text()
    assert (tmp_path / "r" / "cost.csv").is_file()


def test_bootstrap_interval_and_significance_rules():
    assert bootstrap_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2))
    assert all(math.isnan(v) for v in bootstrap_ci([0.3]))
    lo, hi = bootstrap_ci([0.1, 0.2, 0.3, 0.4])
    assert 0.1 <= lo < 0.25 < hi <= 0.4
    lo, hi = bootstrap_ci([-0.2, 0.1, 0.3])
    assert lo < 0 < hi
    assert bootstrap_ci([0.1, 0.5, 0.2]) == bootstrap_ci([0.1, 0.5, 0.2])  # seeded


def opt_row(size, layers, seed, acc, control="pretrained", **extra):
    return {"family": "opt", "size": size, "layers": layers, "task": "digits",
            "control": control, "seed": seed, "val_acc": acc, **extra}


SIZES = [  # three seeds, two sizes, two layers, all controls; one seed of one cell missing
    *[{"control": "none", "task": "digits", "seed": s, "val_acc": 0.50 + 0.01 * s}
      for s in range(3)],
    *[opt_row("125m", "11", s, 0.60 + 0.01 * s) for s in range(3)],
    *[opt_row("125m", "0", s, v) for s, v in [(0, 0.45), (1, 0.56)]],  # seed 2 never ran
    *[opt_row("1.3b", "23", s, 0.70 + 0.02 * s, conc_act_before=0.6, conc_act_after=0.7 + s / 100)
      for s in range(3)],
    *[opt_row("1.3b", "0", s, 0.52) for s in range(3)],
    *[opt_row("125m", "", s, 0.55, control="adapters") for s in range(3)],
    *[opt_row("125m", "11", s, 0.40, control="random") for s in range(3)],
]


def test_paper_tables_significance_missing_and_html(uri, tmp_path):
    log_sweep(uri, "sizes", SIZES)
    report = build_report(uri, "sizes", tmp_path / "r")
    s = report.summary.set_index(["size", "layers", "control"])
    big = s.loc[("1.3b", "23", "pretrained")]
    assert big["delta"] == pytest.approx(0.21) and big["significant"] and big["pairs"] == 3
    assert big["ci_lo"] > 0
    first = s.loc[("125m", "0", "pretrained")]
    assert first["missing"] == 1 and first["n"] == 2 and not first["significant"]
    flat = s.loc[("1.3b", "0", "pretrained")]  # 0.52 vs 0.50, 0.51, 0.52: interval holds 0
    assert flat["ci_lo"] <= 0 <= flat["ci_hi"] and not flat["significant"]

    t1, t2, t3 = (report.tables[k] for k in ("by_layer", "by_size", "by_control"))
    assert list(t1.columns[-2:]) == ["125m", "1.3b"]  # sizes by parameter count
    assert "[1 missing]" in t1.set_index("layers").loc["0", "125m"]
    assert list(t2.columns[-2:]) == ["125m", "1.3b"]  # each size's own last layer: 11, 23
    assert t2["1.3b"].iloc[0].startswith("0.720 ± 0.020 (Δ +0.210, 95% CI [")
    assert t2["1.3b"].iloc[0].count("*") == 1
    row = t3.set_index("size").loc["125m"]
    assert row["adapters"].startswith("0.550") and row["random"].startswith("0.400")
    assert row["none"].startswith("0.510 ± 0.010")

    filtering = report.tables["filtering"].set_index(["size", "layers", "control"])
    assert filtering.loc[("1.3b", "23", "pretrained"), "conc_act_gain"] == pytest.approx(0.11)
    assert filtering.loc[("1.3b", "23", "pretrained"), "delta"] == pytest.approx(0.21)
    assert_figure(tmp_path / "r" / "gain_vs_concentration.png")

    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("<table") == 5 and "Table 2. Metric by model size" in page  # + claims
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 4 and all(u.startswith("data:image/png;base64,") for u in srcs)
    assert "http" not in page.split("<body>")[1]  # nothing to fetch: one self-contained file
    for png in ("metric_vs_layer", "metric_vs_size", "layer_size_heatmap"):
        assert (tmp_path / "r" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_control_choice_pairs_within_the_lm_and_filters_are_validated(uri, tmp_path, capsys):
    log_sweep(uri, "sizes", SIZES)
    log_sweep(uri, "other", [{"control": "none", "task": "digits", "seed": 0, "val_acc": 0.9}])
    report = build_report(uri, "sizes", tmp_path / "a", control="adapters")
    s = report.summary.set_index(["size", "layers", "control"])
    assert s.loc[("125m", "11", "pretrained"), "delta"] == pytest.approx(0.06)  # vs adapters
    assert math.isnan(s.loc[("1.3b", "23", "pretrained"), "delta"])  # no 1.3b adapters run
    both = load_runs(uri, ["sizes", "other"])
    assert set(both["experiment"]) == {"sizes", "other"} and len(both) == len(SIZES) + 1
    assert {"lr", "status", "weights_source", "layer_index", "lm_params"} <= set(both.columns)
    out = tmp_path / "f"
    assert main(["sizes", "--tracking-uri", uri, "--family", "opt", "--out", str(out)]) == 0
    for argv, message in ((["--family", "gpt9"], "unknown family 'gpt9'; valid: opt"),
                          (["--task", "cifar"], "unknown task 'cifar'; valid: digits"),
                          (["--control", "pretrained"], "unknown control 'pretrained'"),
                          (["--metric", "nope"], "unknown metric 'nope'"),
                          (["--frobnicate"], "unrecognized arguments: --frobnicate")):
        capsys.readouterr()
        assert main(["sizes", "--tracking-uri", uri, "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_activation_maps_figure_from_logged_probe_maps(uri, tmp_path):
    log_sweep(uri, "maps", ROWS[:3])
    client = MlflowClient(uri)
    runs = load_runs(uri, "maps")
    for run_id in runs["run_id"]:
        maps = {"inputs": [[[0.0] * 8] * 8] * 2, "informative": [[1] * 16] * 2,
                "act_after": [list(range(16))] * 2}
        client.log_text(run_id, json.dumps(maps), "analysis/probe_maps.json")
    build_report(uri, "maps", tmp_path / "r")
    # two probe rows; the input column and one per control (pretrained L11, none)
    width, height = assert_figure(tmp_path / "r" / "activation_maps_digits.png")
    assert width / height == pytest.approx(3 / 2, rel=0.02)


def test_token_strips_for_tasks_whose_tokens_are_not_an_image(uri, tmp_path):
    log_sweep(uri, "pc", [{**r, "task": "shapes3d"} for r in ROWS[:3]])
    client = MlflowClient(uri)
    for run_id in load_runs(uri, "pc")["run_id"]:
        maps = {"inputs": [[[0.1, 0.2, 0.3, 1.0]] * 256] * 2,  # point clouds, not a grid
                "informative": [[1, 0] * 8] * 2, "act_after": [list(range(16))] * 2}
        client.log_text(run_id, json.dumps(maps), "analysis/probe_maps.json")
    report = build_report(uri, "pc", tmp_path / "r")
    figure = tmp_path / "r" / "activation_maps_shapes3d.png"
    assert figure in report.files
    assert_figure(figure)


# --- the store it reads, never creates; --version; --help ------------------------------------


@pytest.mark.parametrize(("store", "named_by"), [("sqlite", "flag"), ("sqlite", "env"),
                                                  ("sqlite", "default"), ("file", "flag"),
                                                  ("file", "env")])
def test_a_missing_store_is_exit_2_and_never_created(tmp_path, monkeypatch, capsys, store,
                                                       named_by):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ("mlflow.db" if store == "sqlite" else "mlruns")
    uri = f"sqlite:///{path}" if store == "sqlite" else f"file://{path}"
    argv = ["lmblocks-default"] + (["--tracking-uri", uri] if named_by == "flag" else [])
    if named_by == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lmblocks-report: error: ")
    assert "no sweep has been recorded there" in err and str(path) in err
    assert list(tmp_path.iterdir()) == []  # no store, no report folder


def test_the_report_reads_the_flag_then_the_environments_store(uri, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.chdir(tmp_path)
    log_sweep(uri, "lmblocks-exp", ROWS[:3])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["lmblocks-exp"]) == 0  # from the environment
    assert (tmp_path / "lmblocks-reports" / "lmblocks-exp" / "report.html").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    assert main(["lmblocks-exp", "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 0
    assert not (tmp_path / "elsewhere.db").exists()  # the flag won
    capsys.readouterr()


def test_report_version_and_help(capsys, monkeypatch):
    from importlib.metadata import version

    from results.report import build_parser

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"lmblocks-report {version('lmblocks')}"
    monkeypatch.setenv("COLUMNS", "100000")  # no wrapping (argparse breaks at hyphens)
    text = " ".join(build_parser().format_help().split())
    assert text.startswith("usage: lmblocks-report ")
    description = text.split("positional arguments:")[0]
    assert description.rstrip().endswith(".")  # a whole sentence, not a cut line
    assert "0 the report was written" in text and "2 bad input" in text
    assert "MLFLOW_TRACKING_URI" in text and "lmblocks-default" in text


def test_the_heat_map_draws_each_task_apart(tmp_path, monkeypatch):
    """Two tasks with cells at the same layers and LMs: each task's gains in a heat map of
    its own (one shared map let the last task's cells overwrite the first's)."""
    import numpy as np
    import pandas as pd

    from results import plots

    rows = []
    for task, base in (("digits", 0.1), ("shapes3d", -0.2)):
        for size, params in (("125m", 1.25e8), ("1.3b", 1.3e9)):
            for layer in (0, 5, 11):
                rows.append({"task": task, "family": "opt", "size": size, "lm_params": params,
                             "control": "pretrained", "layer_index": float(layer),
                             "mean": 0.5, "delta": base + layer / 100 + params / 1e11})
    rows.append({"task": "digits", "family": "opt", "size": "125m", "lm_params": 1.25e8,
                 "control": "none", "layer_index": np.nan, "mean": 0.4, "delta": np.nan})
    summary = pd.DataFrame(rows)
    summary.attrs["control"] = "none"
    drawn = keep_figure(monkeypatch)
    path = plots.layer_size_heatmap(summary, tmp_path / "heat.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    panels = [ax for ax in drawn["fig"].axes if ax.images]
    assert [ax.get_title() for ax in panels] == [
        "Layer x model size: gain over 'no block' (task digits)",
        "Layer x model size: gain over 'no block' (task shapes3d)"]
    for ax, task in zip(panels, ("digits", "shapes3d"), strict=True):
        want = (summary[(summary["task"] == task) & (summary["control"] == "pretrained")]
                .pivot(index="layer_index", columns="size", values="delta")[["125m", "1.3b"]])
        assert np.allclose(ax.images[0].get_array(), want.to_numpy())


def test_gains_inside_the_noise_are_pale_on_the_heat_map(tmp_path, monkeypatch):
    """Two cells at +0.000 and -1e-8 (the default sweep's): the same pale colour, not the
    scale's two ends; a gain as wide as the cells' interval reaches the end of the scale."""
    import matplotlib.colors as mcolors
    import numpy as np
    import pandas as pd

    from results import plots

    rows = [{"task": "digits", "family": "minilm", "size": "l6", "lm_params": 2.2e7,
             "control": "pretrained", "layer_index": float(layer), "mean": 0.98,
             "delta": delta, "ci_lo": -0.011, "ci_hi": 0.014}
            for layer, delta in ((0, 0.0), (5, -1e-8))]
    summary = pd.DataFrame(rows)
    summary.attrs["control"] = "none"
    drawn = keep_figure(monkeypatch)
    plots.layer_size_heatmap(summary, tmp_path / "heat.png")
    [image] = [im for ax in drawn["fig"].axes for im in ax.images]
    colours = [image.cmap(image.norm(v)) for v in image.get_array().ravel()]
    # one colour (adjacent entries of the colour map's 256 at most) where the gains are equal
    assert np.allclose(colours[0], colours[1], atol=0.01)
    lightness = [mcolors.rgb_to_hsv(c[:3])[2] for c in colours]
    assert min(lightness) > 0.9  # pale, not saturated
    assert image.norm.vmax == pytest.approx(0.025) and image.norm.vmin == pytest.approx(-0.025)


def test_report_tables_print_numbers_as_the_findings_do(tmp_path):
    """The claims' raw floats (``0.000000e+00``, ``8.333325e-03``, ``-1.986821e-08``) print
    as the findings lines do, signed to 3 decimals; other numbers to 3 decimals, or 3
    significant digits where those would hide them; each table scrolls in its own box
    under a header that stays in view."""
    import pandas as pd

    from results.build import shown, write_html

    claims = pd.DataFrame({"claim": ["a", "b", "c"], "difference": [0.0, 8.333325e-03, -1.986821e-08],
                           "ci_low": [-0.011, float("nan"), -2e-4], "n": [3, 3, 1],
                           "mean": [0.98236, 1234567.0, 2.5e-5]})
    text = shown(claims)
    assert list(text["difference"]) == ["+0.000", "+0.008", "-0.000"]
    assert list(text["ci_low"]) == ["-0.011", "", "-0.000"]
    assert list(text["mean"]) == ["0.982", "1.23e+06", "2.5e-05"]
    assert list(text["n"]) == [3, 3, 1]  # counts stay counts
    assert claims["difference"].iloc[1] == 8.333325e-03  # the caller's frame (and CSVs) untouched
    page = write_html(tmp_path / "r.html", "t", "intro", {"claims": claims}, []).read_text()
    assert "e-03" not in page and "e-08" not in page and "+0.008" in page
    assert "<div class='table'><table" in page and "position:sticky" in page
    assert "overflow:auto" in page


def test_metric_vs_layer_draws_one_panel_a_task(tmp_path, monkeypatch):
    """Two tasks of different ranges: each its own axes, its lines and control levels
    alone on it (pooled, one task's lines flatten the other's)."""
    import numpy as np
    import pandas as pd

    from results import plots

    rows = [{"task": task, "family": "opt", "size": "125m", "lm_params": 1.25e8,
             "control": "pretrained", "layer_index": float(layer), "mean": base + layer / 100,
             "mean_lo": np.nan, "mean_hi": np.nan, "n": 1}
            for task, base in (("digits", 0.9), ("road-graphs", 3.0)) for layer in (0, 5, 11)]
    rows += [{"task": task, "family": "", "size": "", "lm_params": np.nan, "control": "none",
              "layer_index": np.nan, "mean": level, "mean_lo": np.nan, "mean_hi": np.nan,
              "n": 1} for task, level in (("digits", 0.85), ("road-graphs", 3.5))]
    drawn = keep_figure(monkeypatch)
    plots.metric_vs_layer(pd.DataFrame(rows), tmp_path / "layers.png")
    axes = [ax for ax in drawn["fig"].axes if ax.lines]
    assert [ax.get_title().split("\n")[0] for ax in axes] == [
        "Which layer helps (digits)", "Which layer helps (road-graphs)"]
    for ax, (lo, hi) in zip(axes, ((0.85, 1.01), (3.0, 3.5)), strict=True):
        ys = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.lines])
        assert ys.min() == pytest.approx(lo) and ys.max() == pytest.approx(hi)
