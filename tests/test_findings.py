"""The report leads with its findings, labels each interval for what it is (by its number of
pairs), leaves out what cannot say anything with the data present (one line why), and its
heat map's numbers stay legible on dark cells."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

from results import claims, findings
from results.build import build_report, load_runs
from results.plots import interval_words, text_colour
from results.stats import bootstrap_ci, interval_label, summarize
from results.tables import cell_text
from tests.test_report import ROWS, log_sweep


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_findings_first_and_one_size_left_out_with_its_reason(uri, tmp_path):
    log_sweep(uri, "two", ROWS)  # 2 seeds; opt/125m only, layers 3 and 11
    report = build_report(uri, "two", tmp_path / "r")
    md = (tmp_path / "r" / "ablation.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith("# Ablation report") and lines[2] == "## Findings"
    at = md.index("## Findings")
    assert at < md.index("claim: pretrained > none") < md.index("## Table 1")
    assert md.index(findings.summary_line(report.claims)) < md.index("## Table 1")
    assert "range of 2, n=2 inconclusive (n=2 < 3 seeds;" in md  # the claim line, labelled
    # Table 2 with one size says nothing: one line in its place, the CSV still written
    reason = "Table 2 (metric by model size) left out: one size per family (opt: 125m)."
    assert reason in md and "## Table 2." not in md
    assert md.index("## Table 1") < md.index(reason) < md.index("## Table 3")
    assert "Figure metric vs model size left out" in md
    assert (tmp_path / "r" / "by_size.csv").is_file()
    assert not (tmp_path / "r" / "metric_vs_size.png").exists()
    # two seeds: "range of 2", never "95% CI", in the cells
    assert "(Δ +0.250, range of 2 [+0.200, +0.300])" in md
    assert "95% CI [" not in md
    page = (tmp_path / "r" / "report.html").read_text()
    body = page.split("<body>")[1]
    assert body.index("<h2>Findings</h2>") < body.index("claim: pretrained &gt; none")
    assert body.index("claim: pretrained &gt; none") < body.index("<table")
    assert reason in page and "Table 2. Metric by model size" not in page
    assert page.count("data:image/png;base64,") == 2  # metric vs layer, the 2 x 1 heat map


def test_intervals_are_labelled_by_the_number_of_pairs():
    assert interval_label(3) == interval_label(5) == "95% CI"
    assert interval_label(2) == "range of 2"
    assert interval_label(1) == interval_label(0) == ""
    assert bootstrap_ci([0.2, 0.3]) == (0.2, 0.3)  # two values: their range, exactly
    row = {"n": 3, "mean": 0.7, "std": 0.02, "delta": 0.21, "ci_lo": 0.19, "ci_hi": 0.23,
           "significant": True, "failed": 0, "missing": 0}
    assert cell_text(pd.Series({**row, "pairs": 3})) == (
        "0.700 ± 0.020 (Δ +0.210, 95% CI [+0.190, +0.230]*)")
    assert cell_text(pd.Series({**row, "pairs": 2, "significant": False})) == (
        "0.700 ± 0.020 (Δ +0.210, range of 2 [+0.190, +0.230])")
    assert cell_text(pd.Series({**row, "n": 1, "pairs": 1, "ci_lo": float("nan"),
                                "significant": False})) == "0.700 (Δ +0.210)"
    # the figures' legends: what the band or bars are, by each cell's n
    assert interval_words([3, 4]) == "95% CI over seeds"
    assert interval_words([2, 2]) == "range of 2 seeds"
    assert interval_words([3, 2]) == "95% CI over seeds; range of 2 seeds"
    assert interval_words([1]) == ""


def test_claim_lines_and_table_label_the_interval():
    def tested(n: int) -> pd.DataFrame:
        row = dict(zip(claims.COLUMNS, ["pretrained > none", "digits, opt/125m, last L11", 0.1,
                                        0.05, 0.15, n, "inconclusive", "why"], strict=True))
        return pd.DataFrame([row], columns=claims.COLUMNS)

    assert "+0.100 [+0.050, +0.150] 95% CI, n=3 inconclusive" in claims.claim_lines(tested(3))[0]
    assert "+0.100 [+0.050, +0.150] range of 2, n=2" in claims.claim_lines(tested(2))[0]
    one = tested(1).assign(ci_low=float("nan"), ci_high=float("nan"))
    assert claims.claim_lines(one)[0].endswith("+0.100 n=1 inconclusive (why)")
    assert list(claims.display(tested(2))["interval"]) == ["range of 2"]
    assert "| range of 2 |" in "\n".join(claims.markdown_section(tested(2)))


def test_no_claim_evaluated_says_why_in_one_line():
    none = pd.DataFrame([claims.not_measured("pretrained > none", "", "needs control pretrained"),
                         claims.not_measured("pretrained > mlp", "", "needs control mlp")],
                        columns=claims.COLUMNS)
    line = findings.summary_line(none)
    assert line.startswith("No claim could be evaluated: ")
    assert "needs control pretrained; needs control mlp" in line
    assert findings.summary_line(pd.DataFrame(columns=claims.COLUMNS)).startswith(
        "No claim could be evaluated")
    section = findings.markdown_section(none)
    assert section[0] == "## Findings\n" and section[1] == line + "\n"


def test_one_layer_of_one_lm_leaves_out_the_layer_figure_and_the_heat_map(uri):
    log_sweep(uri, "one", ROWS[:4])  # none, and opt/125m at layer 11 only
    skip = findings.left_out(summarize(load_runs(uri, "one")))
    assert skip["metric_vs_layer"] == "Figure metric vs layer left out: one layer (layer 11)."
    assert skip["layer_size_heatmap"] == ("Figure layer x size heat map left out: one layer "
                                          "of one LM (opt/125m).")
    assert skip["by_size"].endswith("one size per family (opt: 125m).")


@pytest.mark.parametrize("value", [-1.0, -0.9, 0.9, 1.0])
def test_heat_map_numbers_are_white_on_dark_cells(value):
    dark = matplotlib.colormaps["RdBu"]((value + 1) / 2)  # the map's dark red / dark blue
    assert text_colour(dark) == "white"


def test_heat_map_numbers_are_black_on_light_cells():
    assert text_colour(matplotlib.colormaps["RdBu"](0.5)) == "black"  # near white, the middle
    assert text_colour((1.0, 1.0, 1.0, 1.0)) == "black"
    assert text_colour((0.0, 0.0, 0.0, 1.0)) == "white"
    assert text_colour((0.4, 0.0, 0.12)) == "white"  # dark red
    assert text_colour(matplotlib.colormaps["viridis"](0.0)) == "white"
    assert text_colour(matplotlib.colormaps["viridis"](1.0)) == "black"  # yellow
