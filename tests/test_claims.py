"""The paper's claims judged on constructed runs: supported, contradicted, inconclusive (too
few seeds, an interval holding 0, cells not converged or not judged), not measured; the
metric's direction; the report's claims.csv and section; the console lines."""

from __future__ import annotations

import types

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from experiments.plateau import still_improving
from results import claims
from results.claims import claim_lines, evaluate
from results.convergence import convergence, load_histories

FLAT = [0.3, 0.6, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]  # 8 epochs, plateaued: converged
RISING = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # still improving at the end


def run(control, seed, value, family="", size="", layers="", task="digits", **extra):
    return {"task": task, "family": family, "size": size, "layers": layers, "control": control,
            "seed": seed, "status": "FINISHED", "val_acc": value,
            "run_id": f"{control}-{family}{size}-L{layers}-{task}-s{seed}", **extra}


def frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if "lm_params" not in df:
        df["lm_params"] = float("nan")
    return df


def pre_vs_none(pre, none, metric="val_acc", task="digits"):
    rows = [run("none", s, v, task=task) for s, v in enumerate(none)]
    rows += [run("pretrained", s, v, "minilm", "l6", "5", task=task) for s, v in enumerate(pre)]
    df = frame(rows)
    if metric != "val_acc":
        df = df.rename(columns={"val_acc": metric})
    return df


def flat(df, improving=()):
    """Histories for every run: plateaued, but RISING for the run ids in ``improving``."""
    return {r: (RISING if r in improving else FLAT) for r in df["run_id"]}


def row(table, claim, comparison_part=""):
    hit = table[(table["claim"] == claim) & table["comparison"].str.contains(comparison_part,
                                                                          regex=False)]
    assert len(hit) == 1, table[["claim", "comparison", "verdict"]]
    return hit.iloc[0]


def test_supported_when_the_interval_excludes_zero_with_three_converged_seeds():
    df = pre_vs_none([0.80, 0.83, 0.81], [0.70, 0.71, 0.70])
    r = row(evaluate(df, histories=flat(df)), "pretrained > none")
    assert r["verdict"] == "supported" and r["n"] == 3
    assert r["difference"] == pytest.approx((0.10 + 0.12 + 0.11) / 3)
    assert 0 < r["ci_low"] <= r["difference"] <= r["ci_high"]
    assert r["comparison"] == "digits, minilm/l6, last L5"


def test_contradicted_when_the_interval_excludes_zero_against_the_paper():
    df = pre_vs_none([0.60, 0.62, 0.61], [0.70, 0.71, 0.70])
    r = row(evaluate(df, histories=flat(df)), "pretrained > none")
    assert r["verdict"] == "contradicted" and r["ci_high"] < 0
    assert "against the paper" in r["reason"]


def test_inconclusive_with_two_seeds_even_when_every_difference_is_positive():
    df = pre_vs_none([0.80, 0.83], [0.70, 0.71])
    r = row(evaluate(df, histories=flat(df)), "pretrained > none")
    assert r["ci_low"] > 0  # the interval alone would say supported ...
    assert r["verdict"] == "inconclusive" and "n=2 < 3 seeds" in r["reason"]  # ... n does not


def test_inconclusive_when_the_interval_includes_zero():
    df = pre_vs_none([0.75, 0.66, 0.71], [0.70, 0.71, 0.70])
    r = row(evaluate(df, histories=flat(df)), "pretrained > none")
    assert r["ci_low"] < 0 < r["ci_high"]
    assert r["verdict"] == "inconclusive" and r["reason"] == "interval includes 0"


def test_not_converged_cell_makes_the_claim_inconclusive_and_is_flagged():
    df = pre_vs_none([0.80, 0.83, 0.81], [0.70, 0.71, 0.70])
    pre_ids = df.loc[df["control"] == "pretrained", "run_id"].tolist()
    table = evaluate(df, histories=flat(df, improving=pre_ids[:2]))  # 2 of 3 still rising
    r = row(table, "pretrained > none")
    assert r["verdict"] == "inconclusive"
    assert "not converged: pretrained minilm/l6 L5 (digits) (2/3 seeds still improving)" in (
        r["reason"])
    conv = table.attrs["convergence"].set_index("control")
    assert conv.loc["pretrained", "status"] == "not converged"
    assert conv.loc["none", "status"] == "converged"
    section = "\n".join(claims.markdown_section(table))
    assert "Not converged (not ranked): pretrained minilm/l6 L5 (digits) 2/3" in section
    # one seed of three still rising is not "most seeds": the claim stands
    one = row(evaluate(df, histories=flat(df, improving=pre_ids[:1])), "pretrained > none")
    assert one["verdict"] == "supported"


def test_without_histories_convergence_is_unknown_and_nothing_is_supported():
    df = pre_vs_none([0.80, 0.83, 0.81], [0.70, 0.71, 0.70])
    r = row(evaluate(df, histories=None), "pretrained > none")
    assert r["verdict"] == "inconclusive" and "convergence unknown" in r["reason"]


def test_still_improving_rule():
    assert still_improving(RISING) is True and still_improving(FLAT) is False
    base = [0.5, 0.7, 0.8, 0.8, 0.8, 0.8]  # k = max(2, ceil(6/4)) = 2; best before = 0.8
    assert still_improving([*base, 0.803, 0.80]) is False  # +0.375%: within the 0.5% tolerance
    assert still_improving([*base, 0.806, 0.80]) is True  # +0.75%
    assert still_improving([0.1, 0.9]) is None  # two epochs: nothing before the window
    assert still_improving(None) is None
    ade = [2.0, 1.5, 1.2, 1.1, 1.0, 0.9, 0.8, 0.7]  # lower is better, still falling
    assert still_improving(ade, higher=False) is True
    assert still_improving(ade, higher=True) is False
    # k grows with the epochs: 12 epochs -> the last 3; a rise at epoch 10 counts
    assert still_improving([0.5] * 9 + [0.6, 0.6, 0.6]) is True
    assert still_improving([0.5] * 8 + [0.6, 0.6, 0.6, 0.6]) is False


def test_lower_is_better_metric_flips_the_direction():
    df = pre_vs_none([0.70, 0.72, 0.71], [0.80, 0.81, 0.80], metric="val_minADE",
                     task="road-graphs")
    hist = flat(df)
    lower = row(evaluate(df, "val_minADE", higher=False, histories=hist), "pretrained > none")
    assert lower["difference"] < 0 and lower["verdict"] == "supported"
    higher = row(evaluate(df, "val_minADE", higher=True, histories=hist), "pretrained > none")
    assert higher["verdict"] == "contradicted"
    worse = pre_vs_none([0.90, 0.92, 0.91], [0.80, 0.81, 0.80], metric="val_minADE",
                        task="road-graphs")
    r = row(evaluate(worse, "val_minADE", higher=False, histories=flat(worse)),
            "pretrained > none")
    assert r["verdict"] == "contradicted"


def test_claims_needing_missing_cells_are_not_measured():
    df = pre_vs_none([0.80, 0.83, 0.81], [0.70, 0.71, 0.70])
    table = evaluate(df, histories=flat(df))
    for control in ("mlp", "random-trained"):
        r = row(table, f"pretrained > {control}")
        assert r["verdict"] == "not measured" and r["reason"] == f"needs control {control}"
    assert row(table, "block position: end > middle > start")["reason"].startswith(
        "needs the pretrained block at two or more of end, middle, start")
    assert row(table, "last layers > early ones")["verdict"] == "not measured"
    assert row(table, "only large enough LMs help")["reason"] == "needs 2+ sizes of the family"
    # an mlp control sized like the LM: paired on that LM; for another LM it is missing
    mlp = [run("mlp", s, 0.79, "minilm", "l6", "5") for s in range(3)]
    mlp += [run("mlp", s, 0.5, "opt", "125m", "11") for s in range(3)]
    with_mlp = frame([*df.to_dict("records"), *mlp])
    r = row(evaluate(with_mlp, histories=flat(with_mlp)), "pretrained > mlp")
    assert r["n"] == 3 and r["difference"] == pytest.approx((0.01 + 0.04 + 0.02) / 3)
    assert r["verdict"] == "supported"
    empty = evaluate(frame([run("none", s, 0.7) for s in range(3)]), histories={})
    assert set(empty["verdict"]) == {"not measured"}
    assert row(empty, "pretrained > none")["reason"] == "needs control pretrained"


def test_last_layer_against_the_earliest_layer_of_the_same_lm():
    rows = [run("pretrained", s, v, "minilm", "l6", "5") for s, v in enumerate([.8, .82, .81])]
    rows += [run("pretrained", s, v, "minilm", "l6", "0") for s, v in enumerate([.6, .61, .6])]
    rows += [run("pretrained", s, 0.9, "minilm", "l6", "3") for s in range(3)]  # not compared
    df = frame(rows)
    r = row(evaluate(df, histories=flat(df)), "last layers > early ones")
    assert r["comparison"] == "digits, minilm/l6, L5 vs L0"
    assert r["verdict"] == "supported" and r["difference"] == pytest.approx(0.62 / 3)
    flipped = df.assign(val_acc=df["val_acc"].where(df["layers"] != "0", 0.95))
    assert row(evaluate(flipped, histories=flat(df)), "last layers > early ones")[
        "verdict"] == "contradicted"


def sizes_frame(small, large, none=(0.70, 0.71, 0.70)):
    rows = [run("none", s, v) for s, v in enumerate(none)]
    rows += [run("pretrained", s, v, "opt", "125m", "11", lm_params=1.25e8)
             for s, v in enumerate(small)]
    rows += [run("pretrained", s, v, "opt", "1.3b", "23", lm_params=1.3e9)
             for s, v in enumerate(large)]
    return frame(rows)


def test_only_large_enough_lms_help():
    df = sizes_frame(small=(0.69, 0.72, 0.70), large=(0.80, 0.82, 0.81))
    r = row(evaluate(df, histories=flat(df)), "only large enough LMs help")
    assert r["comparison"] == "digits, opt, 1.3b vs 125m at last layer"
    assert r["verdict"] == "supported" and r["n"] == 3
    assert r["difference"] == pytest.approx((0.11 + 0.10 + 0.11) / 3)
    both_help = sizes_frame(small=(0.76, 0.77, 0.76), large=(0.80, 0.82, 0.81))
    r = row(evaluate(both_help, histories=flat(both_help)), "only large enough LMs help")
    assert r["verdict"] == "contradicted" and "smallest already beats none" in r["reason"]
    shrinking = sizes_frame(small=(0.80, 0.82, 0.81), large=(0.69, 0.72, 0.70))
    r = row(evaluate(shrinking, histories=flat(shrinking)), "only large enough LMs help")
    assert r["verdict"] == "contradicted" and "larger is worse than smaller" in r["reason"]
    two = sizes_frame(small=(0.69, 0.72), large=(0.80, 0.82), none=(0.70, 0.71))
    r = row(evaluate(two, histories=flat(two)), "only large enough LMs help")
    assert r["verdict"] == "inconclusive" and "n=2 < 3 seeds" in r["reason"]


def test_console_lines():
    df = pre_vs_none([0.80, 0.83, 0.81], [0.70, 0.71, 0.70])
    lines = claim_lines(evaluate(df, histories=flat(df)))
    first = lines[0]
    assert first.startswith("claim: pretrained > none (digits, minilm/l6, last L5) +0.110 [+0.")
    assert first.endswith("n=3 supported")
    assert "claim: pretrained > mlp not measured (needs control mlp)" in lines
    assert ("claim: block position: end > middle > start not measured (needs the pretrained "
            "block at two or more of end, middle, start (--positions))") in lines
    two = pre_vs_none([0.80, 0.83], [0.70, 0.71])
    assert claim_lines(evaluate(two, histories=flat(two)))[0].endswith(
        "n=2 inconclusive (n=2 < 3 seeds)")


def test_finish_prints_the_claims_before_the_table(monkeypatch, tmp_path, capsys):
    from orchestrator import cli
    from results.build import Report

    df = pre_vs_none([0.80, 0.83, 0.81], [0.70, 0.71, 0.70])
    table = pd.DataFrame({"task": ["digits"], "mean": [0.8]})
    report = Report(table, pd.DataFrame(), {}, [], claims=evaluate(df, histories=flat(df)))
    monkeypatch.setattr("results.build.build_report", lambda *a, **k: report)
    monkeypatch.setattr("orchestrator.failures.failed_trials", lambda *a: [])
    monkeypatch.setattr("orchestrator.tracking.log_sweep_summary", lambda *a: None)
    outcome = types.SimpleNamespace(experiment="e", tracking_uri=f"sqlite:///{tmp_path}/x.db",
                                    parent_run_id="p", finished=9, failed=0, seconds=1.0,
                                    storage=str(tmp_path))
    assert cli._finish(outcome, types.SimpleNamespace(report_dir=str(tmp_path))) == 0
    out = capsys.readouterr().out
    at = out.index("claim: pretrained > none (digits, minilm/l6, last L5) +0.110")
    assert at < out.index("| digits") < out.index("9 trials finished")  # findings first
    assert out.count("claim: ") == len(report.claims)


def test_report_writes_claims_csv_and_section_from_mlflow_histories(tmp_path, capsys):
    from results.build import build_report
    from results.report import main
    from tests.test_report import log_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = [{"control": "none", "task": "digits", "seed": s, "val_acc": 0.70 + 0.005 * s}
            for s in range(3)]
    rows += [{"family": "minilm", "size": "l6", "layers": "5", "task": "digits",
              "control": "pretrained", "seed": s, "val_acc": 0.80 + 0.01 * s} for s in range(3)]
    parent = log_sweep(uri, "claims", rows)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("claims").experiment_id],
                              "tags.`lmblocks.kind` = 'trial'")
    for r in runs:  # a longer, plateaued history (step 2 logged twice: a retried epoch)
        final = r.data.metrics["val_acc"]
        for step in range(2, 9):
            client.log_metric(r.info.run_id, "val_acc", final, step=step)
    report = build_report(uri, "claims", tmp_path / "r", log_to=parent)
    r = row(report.claims, "pretrained > none")
    assert r["verdict"] == "supported" and r["n"] == 3
    saved = pd.read_csv(tmp_path / "r" / "claims.csv")
    assert list(saved.columns) == claims.COLUMNS and len(saved) == len(report.claims)
    md = (tmp_path / "r" / "ablation.md").read_text()
    assert "## Claims of the paper, tested" in md and "supported" in md
    assert "Claims of the paper" in (tmp_path / "r" / "report.html").read_text()
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/claims.csv" in logged
    one = runs[0].info.run_id
    got = load_histories(client, pd.DataFrame({"run_id": [one], "status": ["FINISHED"]}),
                                "val_acc")
    assert len(got[one]) == 8 and got[one][0] == 0.0  # steps 1..8, the retried step once
    # the report's command prints the same claims lines after its table
    assert main(["claims", "--tracking-uri", uri, "--out", str(tmp_path / "r2")]) == 0
    out = capsys.readouterr().out
    at = out.index("claim: pretrained > none (digits, minilm/l6, last L5)")
    assert out.index("| digits") < at < out.index("report written")
    assert out.count("claim: ") == len(report.claims)


def test_convergence_table_counts_judged_seeds():
    df = pre_vs_none([0.8, 0.8, 0.8], [0.7, 0.7, 0.7])
    hist = {r: FLAT for r in df["run_id"]}
    hist[df["run_id"].iloc[0]] = [0.1, 0.9]  # too short to judge
    conv = convergence(df, hist).set_index("control")
    assert conv.loc["none", "judged"] == 2 and conv.loc["none", "status"] == "converged"
    assert conv.loc["pretrained", "judged"] == 3


def placed(values_by_position: dict[str, list[float]], none=(0.70, 0.71, 0.70)) -> pd.DataFrame:
    """The pretrained minilm/l6 L5 block at each position, with no block beside it."""
    rows = [run("none", s, v, position="") for s, v in enumerate(none)]
    rows += [run("pretrained", s, v, "minilm", "l6", "5", position=p,
                 run_id=f"pre-{p}-s{s}")
             for p, values in values_by_position.items() for s, v in enumerate(values)]
    return frame(rows)


def test_block_position_claim_reads_table_d_order_paired_on_seed():
    df = placed({"end": [0.85, 0.86, 0.84], "middle": [0.80, 0.81, 0.80],
                 "start": [0.70, 0.72, 0.71]})
    r = row(evaluate(df, histories=flat(df)), "block position: end > middle > start")
    assert r["verdict"] == "supported" and r["n"] == 3
    assert "end vs start" in r["comparison"] and "L5" in r["comparison"]
    assert r["difference"] == pytest.approx((0.15 + 0.14 + 0.13) / 3)
    assert "end - middle +0.047" in r["reason"] and "middle - start +0.093" in r["reason"]
    # the claims of the method read the block at the end only: middle and start are worse
    # than no block here, yet "pretrained > none" is end's +0.147
    vs_none = row(evaluate(df, histories=flat(df)), "pretrained > none")
    assert vs_none["difference"] == pytest.approx((0.15 + 0.15 + 0.14) / 3)


def test_block_position_claim_contradicted_inconclusive_and_without_middle():
    worse = placed({"end": [0.70, 0.71, 0.70], "start": [0.80, 0.82, 0.81]})
    r = row(evaluate(worse, histories=flat(worse)), "block position: end > middle > start")
    assert r["verdict"] == "contradicted" and "start beats end" in r["reason"]
    assert "end vs start" in r["comparison"]
    two = placed({"end": [0.85, 0.86], "middle": [0.80, 0.81]}, none=(0.7, 0.7))
    r = row(evaluate(two, histories=flat(two)), "block position: end > middle > start")
    assert r["verdict"] == "inconclusive" and "n=2 < 3 seeds" in r["reason"]
    rising = placed({"end": [0.85, 0.86, 0.84], "middle": [0.80, 0.81, 0.80]})
    r = row(evaluate(rising, histories=flat(rising, improving={"pre-middle-s0", "pre-middle-s1"})),
            "block position: end > middle > start")
    assert r["verdict"] == "inconclusive"
    assert "not converged: pretrained minilm/l6 L5 at middle (digits)" in r["reason"]
