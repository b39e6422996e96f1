"""What the report leads with, and what it leaves out.

``lines``: the findings, i.e. a plain-language count of the claims' verdicts, then the claims'
own verdict lines (``results.claims.claim_lines``: no second verdict logic here); when no claim
could be evaluated, one line saying why. ``left_out``: the tables and figures that cannot say
anything with the data present (one size per family, one layer, a 1 x 1 heat map), each with
the one-line reason the report prints in its place.
"""

from __future__ import annotations

import html

import pandas as pd

from results import claims as claims_
from results.tables import fixed_layer, layer_controls

VERDICTS = ("supported", "contradicted", "inconclusive", "not measured")

# what is left out, by key: a table of results.report.TABLES or a figure's file stem
NAMES = {
    "by_size": "Table 2 (metric by model size)",
    "metric_vs_size": "Figure metric vs model size",
    "metric_vs_layer": "Figure metric vs layer",
    "layer_size_heatmap": "Figure layer x size heat map",
}


def summary_line(tested: pd.DataFrame) -> str:
    """``7 claims of the paper tested: 1 supported, 0 contradicted, 3 inconclusive, 3 not
    measured.``, or, when none could be evaluated, why."""
    if tested.empty:
        return "No claim could be evaluated: no finished trial."
    counts = tested["verdict"].value_counts()
    if counts.get("not measured", 0) == len(tested):
        why = "; ".join(dict.fromkeys(tested["reason"]))
        return f"No claim could be evaluated: the runs lack the cells they compare ({why})."
    parts = [f"{counts.get(v, 0)} {v}" for v in VERDICTS]
    line = f"{len(tested)} claims of the paper tested: {', '.join(parts)}."
    if counts.get("inconclusive", 0):
        line += " Inconclusive: the reason follows each line (too few seeds, an interval "
        line += "holding 0, cells not converged)."
    return line


def lines(tested: pd.DataFrame) -> list[str]:
    """The findings: the summary line, then one verdict line per claim."""
    return [summary_line(tested), *claims_.claim_lines(tested)]


def markdown_section(tested: pd.DataFrame) -> list[str]:
    first, *rest = lines(tested)
    return ["## Findings\n", first + "\n", *(f"- {line}" for line in rest), ""]


def html_section(tested: pd.DataFrame) -> str:
    first, *rest = lines(tested)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in rest)
    return (f"<h2>Findings</h2><p>{html.escape(first)}</p>"
            + (f"<ul class='findings'>{items}</ul>" if items else ""))


def _sizes_per_family(pre: pd.DataFrame) -> dict[str, list[str]]:
    return {f: list(dict.fromkeys(g.sort_values("lm_params")["size"]))
            for f, g in pre.groupby("family", sort=False)}


def left_out(summary: pd.DataFrame, layer: str = "last") -> dict[str, str]:
    """Key (``NAMES``) -> the one-line reason it is left out of ablation.md and report.html."""
    out: dict[str, str] = {}
    if summary.empty:
        return out
    swept = summary[summary["control"].isin(layer_controls())]
    at_layer = fixed_layer(summary, layer)
    if not at_layer.empty:
        sizes = _sizes_per_family(at_layer)
        if all(len(v) == 1 for v in sizes.values()):
            which = ", ".join(f"{f}: {v[0]}" for f, v in sizes.items())
            why = f"one size per family ({which})"
            out["by_size"] = f"{NAMES['by_size']} left out: {why}."
            out["metric_vs_size"] = f"{NAMES['metric_vs_size']} left out: {why}."
    elif not swept.empty:
        why = f"no pretrained cell at layer '{layer}' (--layer)"
        out["by_size"] = f"{NAMES['by_size']} left out: {why}."
        out["metric_vs_size"] = f"{NAMES['metric_vs_size']} left out: {why}."
    layers = sorted(swept["layer_index"].dropna().unique())
    if swept.empty:
        out["metric_vs_layer"] = (f"{NAMES['metric_vs_layer']} left out: no cell with a "
                                  "pretrained block, so no layer to compare.")
    elif len(layers) <= 1:
        which = f" (layer {int(layers[0])})" if layers else ""
        out["metric_vs_layer"] = f"{NAMES['metric_vs_layer']} left out: one layer{which}."
    lms = swept[["family", "size"]].drop_duplicates()
    if not swept.empty and len(layers) <= 1 and len(lms) == 1:
        out["layer_size_heatmap"] = (f"{NAMES['layer_size_heatmap']} left out: one layer of "
                                     f"one LM ({lms.iloc[0]['family']}/{lms.iloc[0]['size']}).")
    return out
