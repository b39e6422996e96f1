"""The paper's claims, tested on the sweep's own runs: one row per claim and comparison with
the paired difference, its bootstrap 95% interval, n and a verdict.

Claims (Pang et al., ICLR 2024) the data can speak to, each per task and LM:

- ``pretrained > none`` / ``pretrained > mlp`` / ``pretrained > random-trained``: the
  pretrained block at the LM's last layer against the control (paired on task and seed, and
  on the LM where the control has one);
- ``last layers > early ones``: the pretrained block at the LM's last layer against its
  earliest swept layer (same task, LM and seed);
- ``only large enough LMs help``: per task and family, at each size's own last layer. The
  test: three paired comparisons, largest - smallest size (the difference shown), largest -
  none and smallest - none. Supported when the largest beats the smallest and beats none and
  the smallest does not beat none (its interval does not exclude 0 in the better direction);
  contradicted when the largest is worse than the smallest, or the largest is worse than
  none, or the smallest already beats none (then not *only* large LMs help);
- ``block position: end > middle > start`` (Table D): per task, LM and layer selection, the
  pretrained block at each of the three positions the sweep ran, paired on seed: end - middle
  and middle - start (end - start when the sweep has no middle). Supported when every
  comparison favours the earlier position, contradicted when one favours the later; the
  difference shown is end (or the best-placed position run) minus the last one run.

The other claims are of the paper's method: the block at the encoder's end; cells at other
positions take no part in them.

Verdict rules. Differences are ``a - b`` in the metric's units; "better" follows the task's
mode (``higher``: max, e.g. accuracy; else min, e.g. minADE, where a negative difference is
better). The interval is ``results.stats.bootstrap_ci`` of the per-seed paired differences.

- **supported**: the interval excludes 0 in the paper's direction, n >= 3 pairs
  (``stats.MIN_PAIRS``) and every involved cell converged;
- **contradicted**: the interval excludes 0 in the opposite direction, same conditions;
- **inconclusive** otherwise, with the reason: n < 3, the interval includes 0, named cells
  not converged, named cells that did not learn (most seeds' training loss ended at chance,
  ln C), or their convergence unknown (no per-epoch history);
- **not measured**: the sweep lacks the cells (``needs control X``, an early layer, a
  second size, a second of the positions end, middle, start).

Convergence. A seed (run) is *still improving* when the best of its task metric over the last
k epochs, k = max(2, ceil(25% of its epochs)), beats its best before them by more than 0.5%
of that earlier best (relative tolerance; in the metric's direction). A run with k or fewer
epochs, or no history, cannot be judged. A cell is *not converged* when most of its judged
seeds (more than half) are still improving, *converged* when not, *unknown* when none can be
judged. Nothing defaults to the paper: a missing check never yields ``supported``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from experiments.plateau import TOLERANCE
from experiments.trial import DEFAULT_POSITION, parse_label
from results.convergence import convergence
from results.runs import last_layer
from results.stats import (
    CELL,
    MIN_PAIRS,
    best_hparams,
    bootstrap_ci,
    interval_label,
    with_positions,
)

COLUMNS = ["claim", "comparison", "difference", "ci_low", "ci_high", "n", "verdict", "reason"]
PRE_CONTROLS = ("none", "mlp", "random-trained")  # "pretrained > X" claims, in this order
LAST_EARLY = "last layers > early ones"
SIZES = "only large enough LMs help"
POSITION = "block position: end > middle > start"
TABLE_D = (DEFAULT_POSITION, "middle", "start")  # the paper's order, best first


def cell_name(task: str, family: str, size: str, layers: str, position: str,
              control: str) -> str:
    lm = f" {family}/{size}" if family else ""
    layer = f" L{layers}" if layers else ""
    at = f" at {position}" if position not in ("", DEFAULT_POSITION) else ""
    return f"{control}{lm}{layer}{at} ({task})"


def _direction(lo: float, hi: float, higher: bool) -> int:
    """+1: the interval excludes 0 on the better side; -1: on the worse side; 0: neither."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0
    sign = 1 if higher else -1
    if min(sign * lo, sign * hi) > 0:
        return 1
    if max(sign * lo, sign * hi) < 0:
        return -1
    return 0


def _paired(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> tuple[float, float, float, int]:
    """Mean of a - b over the seeds both have, its bootstrap interval and n."""
    sa = a[["seed", metric]].drop_duplicates("seed").set_index("seed")[metric]
    sb = b[["seed", metric]].drop_duplicates("seed").set_index("seed")[metric]
    both = sa.index[sa.index.isin(sb.index)]  # the seeds both have, in a's order
    diffs = (sa.loc[both].to_numpy(dtype=float) - sb.loc[both].to_numpy(dtype=float))
    lo, hi = bootstrap_ci(diffs)
    return (float(diffs.mean()) if len(diffs) else float("nan")), lo, hi, len(diffs)


def _problems(cells: list[tuple], status: dict[tuple, dict]) -> list[str]:
    out = []
    for cell in cells:
        s = status.get(cell)
        if s is None or s["status"] == "unknown":
            out.append(f"convergence unknown: {cell_name(*cell)} (no per-epoch history)")
        elif s["status"] == "did not learn":
            out.append(f"did not learn: {cell_name(*cell)} ({s['at_chance']}/{s['seeds']} seeds' "
                       "training loss stayed at chance)")
        elif s["status"] == "not converged":
            out.append(f"not converged: {cell_name(*cell)} "
                       f"({s['improving']}/{s['judged']} seeds still improving)")
    return out


def _row(claim: str, comparison: str, stats: tuple[float, float, float, int], higher: bool,
         problems: list[str]) -> dict:
    diff, lo, hi, n = stats
    direction = _direction(lo, hi, higher)
    reasons = [f"n={n} < {MIN_PAIRS} seeds"] if n < MIN_PAIRS else []
    reasons += problems
    if direction == 0:
        reasons.append("interval includes 0" if np.isfinite(lo) else "no interval")
    if reasons:
        verdict = "inconclusive"
    else:
        verdict = "supported" if direction > 0 else "contradicted"
        reasons = ["interval excludes 0 " + ("in the paper's direction" if direction > 0
                                             else "against the paper")]
    return dict(zip(COLUMNS, [claim, comparison, diff, lo, hi, n, verdict, "; ".join(reasons)],
                    strict=True))


def not_measured(claim: str, comparison: str, reason: str) -> dict:
    return dict(zip(COLUMNS, [claim, comparison, float("nan"), float("nan"), float("nan"), 0,
                              "not measured", reason], strict=True))


def _key(rows: pd.DataFrame) -> tuple:
    return tuple(rows[c].iloc[0] for c in CELL)  # not rows.iloc[0]: a row of every column


def _last_label(labels: set[str], family: str, size: str) -> str | None:
    """The selection holding the LM's last layer: that layer alone, else a span ending there."""
    labels = {lab for lab in labels if lab}
    if not labels:
        return None
    last = last_layer(family, size)
    if last is None:  # an LM this install does not know: the deepest swept layer
        last = max(parse_label(lab)[-1] for lab in labels)
    if str(last) in labels:
        return str(last)
    spans = sorted(lab for lab in labels if parse_label(lab)[-1:] == (last,))
    return spans[-1] if spans else None


def _pretrained_lms(runs: pd.DataFrame):
    """(task, family, size, its pretrained runs, the last-layer label or None) per LM."""
    pre = runs[runs["control"] == "pretrained"]
    for (task, family, size), grp in pre.groupby(["task", "family", "size"], sort=False):
        labels = set(grp["layers"])
        yield task, family, size, grp, _last_label(labels, family, size)


def _vs_controls(runs: pd.DataFrame, metric: str, higher: bool, status: dict) -> list[dict]:
    rows = []
    lms = list(_pretrained_lms(runs))
    for control in PRE_CONTROLS:
        claim = f"pretrained > {control}"
        base = runs[runs["control"] == control]
        by_task = dict(tuple(base.groupby("task", sort=False)))  # one pass, not one per LM
        if base.empty or not lms:
            rows.append(not_measured(claim, "", f"needs control {control}" if base.empty
                                     else "needs control pretrained"))
            continue
        for task, family, size, grp, last in lms:
            where = f"{task}, {family}/{size}"
            b = by_task.get(task, base.iloc[:0])
            if (b["family"] != "").any():  # a control sized like the LM: the same LM
                b = b[(b["family"] == family) & (b["size"] == size)]
            if b.empty:
                rows.append(not_measured(claim, where, f"needs control {control} here"))
            elif last is None:
                rows.append(not_measured(claim, where, "needs the pretrained block at the "
                                                       "last layer"))
            else:
                a = grp[grp["layers"] == last]
                rows.append(_row(claim, f"{where}, last L{last}", _paired(a, b, metric), higher,
                                 _problems([_key(a), _key(b)], status)))
    return rows


def _last_vs_early(runs: pd.DataFrame, metric: str, higher: bool, status: dict) -> list[dict]:
    rows = []
    for task, family, size, grp, last in _pretrained_lms(runs):
        where = f"{task}, {family}/{size}"
        others = sorted((lab for lab in set(grp["layers"]) if lab and lab != last),
                        key=lambda lab: (parse_label(lab)[0], len(parse_label(lab))))
        if last is None or not others or parse_label(others[0])[0] >= parse_label(last)[0]:
            rows.append(not_measured(LAST_EARLY, where, "needs an early layer and the last "
                                                        "layer of the same LM"))
            continue
        a, b = grp[grp["layers"] == last], grp[grp["layers"] == others[0]]
        rows.append(_row(LAST_EARLY, f"{where}, L{last} vs L{others[0]}",
                         _paired(a, b, metric), higher, _problems([_key(a), _key(b)], status)))
    if not rows:
        rows.append(not_measured(LAST_EARLY, "", "needs control pretrained"))
    return rows


def _sizes(runs: pd.DataFrame, metric: str, higher: bool, status: dict) -> list[dict]:
    at_last: dict[tuple[str, str], list] = {}
    for task, family, size, grp, last in _pretrained_lms(runs):
        if last is not None:
            at_last.setdefault((task, family), []).append((size, grp[grp["layers"] == last]))
    rows = []
    for (task, family), cells in at_last.items():
        where = f"{task}, {family}"
        params = [c[1]["lm_params"].iloc[0] for c in cells]
        none = runs[(runs["control"] == "none") & (runs["task"] == task)]
        if len(cells) < 2 or none.empty or any(pd.isna(p) for p in params):
            need = ("needs 2+ sizes of the family" if len(cells) < 2 else
                    "needs control none" if none.empty else "needs known LM sizes")
            rows.append(not_measured(SIZES, where, need))
            continue
        ordered = [c for _, c in sorted(zip(params, cells, strict=True), key=lambda t: t[0])]
        (small_size, small), (large_size, large) = ordered[0], ordered[-1]
        growth = _paired(large, small, metric)
        g_large, g_small = _paired(large, none, metric), _paired(small, none, metric)
        problems = _problems([_key(large), _key(small), _key(none)], status)
        n = min(growth[3], g_large[3], g_small[3])
        gains = (f"vs none: {small_size} {g_small[0]:+.3f} [{g_small[1]:+.3f}, "
                 f"{g_small[2]:+.3f}], {large_size} {g_large[0]:+.3f} [{g_large[1]:+.3f}, "
                 f"{g_large[2]:+.3f}]")
        d_growth, d_large, d_small = (_direction(s[1], s[2], higher)
                                      for s in (growth, g_large, g_small))
        against = [why for bad, why in ((d_growth < 0, "larger is worse than smaller"),
                                        (d_large < 0, "largest is worse than none"),
                                        (d_small > 0, "smallest already beats none")) if bad]
        supported = not against and d_growth > 0 and d_large > 0
        evidence = against or (["pattern holds: largest > smallest, largest > none, smallest not > none"]
                               if supported else
                               [why for bad, why in ((d_growth == 0, "growth interval includes 0"),
                                                     (d_large == 0, "largest vs none includes 0"))
                                if bad])
        blockers = ([f"n={n} < {MIN_PAIRS} seeds"] if n < MIN_PAIRS else []) + problems
        verdict = ("inconclusive" if blockers else "contradicted" if against else
                   "supported" if supported else "inconclusive")
        reason = "; ".join(blockers + evidence)
        comparison = f"{where}, {large_size} vs {small_size} at last layer"
        rows.append(dict(zip(COLUMNS, [SIZES, comparison, *growth[:3], n, verdict,
                                       f"{reason} ({gains})"], strict=True)))
    if not rows:
        rows.append(not_measured(SIZES, "", "needs control pretrained at the last layer"))
    return rows


def _positions(runs: pd.DataFrame, metric: str, higher: bool, status: dict) -> list[dict]:
    """Table D's order, per task, LM and layer selection of the pretrained block."""
    rows = []
    pre = runs[runs["control"] == "pretrained"]
    for (task, family, size, layers), grp in pre.groupby(["task", "family", "size", "layers"],
                                                        sort=False):
        ran = [p for p in TABLE_D if (grp["position"] == p).any()]
        where = f"{task}, {family}/{size} L{layers}"
        if len(ran) < 2:
            continue
        cells = {p: grp[grp["position"] == p] for p in ran}
        steps = list(itertools.pairwise(ran))
        pairs = [_paired(cells[a], cells[b], metric) for a, b in steps]
        head = _paired(cells[ran[0]], cells[ran[-1]], metric)
        directions = [_direction(p[1], p[2], higher) for p in pairs]
        against = [f"{b} beats {a}" for (a, b), d in zip(steps, directions, strict=True) if d < 0]
        supported = not against and all(d > 0 for d in directions)
        steps_said = ", ".join(f"{a} - {b} {p[0]:+.3f} [{p[1]:+.3f}, {p[2]:+.3f}]"
                               for (a, b), p in zip(steps, pairs, strict=True))
        evidence = against or ([f"order holds: {' > '.join(ran)}"] if supported else
                               [f"{a} vs {b} includes 0" for (a, b), d in
                                zip(steps, directions, strict=True) if d == 0])
        n = min(p[3] for p in pairs)
        blockers = ([f"n={n} < {MIN_PAIRS} seeds"] if n < MIN_PAIRS else []) + _problems(
            [_key(c) for c in cells.values()], status)
        verdict = ("inconclusive" if blockers else "contradicted" if against else
                   "supported" if supported else "inconclusive")
        rows.append(dict(zip(COLUMNS, [POSITION, f"{where}, {ran[0]} vs {ran[-1]}", *head[:3],
                                       n, verdict, "; ".join(blockers + evidence)
                                       + f" ({steps_said})"], strict=True)))
    if not rows:
        rows.append(not_measured(POSITION, "", "needs the pretrained block at two or more of "
                                               "end, middle, start (--positions)"))
    return rows


def evaluate(df: pd.DataFrame, metric: str = "val_acc", higher: bool = True,
             histories: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """The claims table (``COLUMNS``); ``attrs["convergence"]``: the per-cell convergence
    table. ``histories``: run id -> per-epoch metric values (None: convergence unknown)."""
    df = with_positions(df)
    runs = best_hparams(df, metric, higher) if not df.empty else df
    runs = runs[(runs["status"] == "FINISHED") & runs[metric].notna()] if not df.empty else df
    conv = convergence(runs, histories, higher)
    status = {tuple(r[c] for c in CELL): r for r in conv.to_dict("records")}
    at_end = runs[runs["position"].isin([DEFAULT_POSITION, ""])]  # the paper's method
    rows = _vs_controls(at_end, metric, higher, status)
    rows += _last_vs_early(at_end, metric, higher, status)
    rows += _sizes(at_end, metric, higher, status)
    rows += _positions(runs, metric, higher, status)
    out = pd.DataFrame(rows, columns=COLUMNS)
    out.attrs.update(convergence=conv, metric=metric, higher=higher)
    return out


def _num(v: float) -> str:
    return f"{v:+.3f}" if np.isfinite(v) else "n/a"


def claim_lines(claims: pd.DataFrame) -> list[str]:
    """One console line per claim: ``claim: pretrained > none (digits, minilm/l6, last L5)
    +0.031 [+0.012, +0.050] 95% CI, n=3 supported``; the interval labelled by n (``range of
    2`` with two pairs, none with one: ``stats.interval_label``)."""
    lines = []
    for r in claims.to_dict("records"):
        head = f"claim: {r['claim']}" + (f" ({r['comparison']})" if r["comparison"] else "")
        if r["verdict"] == "not measured":
            lines.append(f"{head} not measured ({r['reason']})")
            continue
        label = interval_label(r["n"])
        interval = (f" [{_num(r['ci_low'])}, {_num(r['ci_high'])}] {label}," if label and
                    np.isfinite(r["ci_low"]) else "")
        line = f"{head} {_num(r['difference'])}{interval} n={r['n']} {r['verdict']}"
        lines.append(line + (f" ({r['reason']})" if r["verdict"] == "inconclusive" else ""))
    return lines


def display(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims table as the report shows it: an ``interval`` column after the bounds says
    what they are (``stats.interval_label`` of n); bounds without an interval blanked."""
    if claims.empty:
        return claims
    label = claims["n"].map(interval_label)
    shown = claims.assign(ci_low=claims["ci_low"].where(label != ""),
                          ci_high=claims["ci_high"].where(label != ""))
    shown.insert(shown.columns.get_loc("ci_high") + 1, "interval", label)
    return shown


def markdown_section(claims: pd.DataFrame) -> list[str]:
    """The report's claims section: rules, the table, the cells not converged (not ranked)."""
    higher = claims.attrs.get("higher", True)
    rules = (f"Difference = a - b in {claims.attrs.get('metric', 'the metric')} "
             f"({'higher' if higher else 'lower'} is better), paired on task and seed, with its "
             f"interval (column 'interval': a bootstrap 95% CI with n >= {MIN_PAIRS} pairs, "
             "the two differences' range with 2, none with 1). Supported / contradicted: the "
             "interval excludes 0 for / "
             f"against the paper with n >= {MIN_PAIRS} seeds and every involved cell converged; "
             "else inconclusive, with the reason. A cell is not converged when most of its seeds "
             f"still improved by more than {TOLERANCE:.1%} over their last max(2, 25%) epochs.\n")
    shown = display(claims)
    md = ["## Claims of the paper, tested\n", rules,
          shown.astype(object).where(shown.notna(), "").to_markdown(index=False,
                                                                    floatfmt="+.4f"), ""]
    conv = claims.attrs.get("convergence")
    if conv is not None and not conv.empty:
        flagged = conv[conv["status"] == "not converged"]
        if not flagged.empty:
            md.append("Not converged (not ranked): " + "; ".join(
                f"{cell_name(*(r[c] for c in CELL))} {r['improving']}/{r['judged']} seeds "
                "still improving" for r in flagged.to_dict("records")) + "\n")
        stuck = conv[conv["status"] == "did not learn"]
        if not stuck.empty:
            md.append("Did not learn (training loss at chance; not ranked): " + "; ".join(
                f"{cell_name(*(r[c] for c in CELL))} {r['at_chance']}/{r['seeds']} seeds"
                for r in stuck.to_dict("records")) + "\n")
    return md
