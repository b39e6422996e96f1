"""Per-cell statistics over seeds, and paired comparisons against a control with bootstrap
confidence intervals: the numbers behind every claim a report makes.

A *cell* is (task, family, size, layers, position, control); its seeds are repeats. A cell is
compared with the chosen control seed by seed (same task and seed; for the ``adapters`` and
``random`` controls also the same family, size and position, since those controls are sized
like the LM and placed like it), and the
paired differences get a percentile bootstrap 95% interval. A cell is *significant* only when
that interval excludes zero and rests on at least three pairs (with two, a percentile
bootstrap interval is just the span of the two differences, so it is labelled "range of 2",
not "95% CI": ``interval_label``).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from encoders.lm.controls import get_control, list_controls, reference_controls
from experiments.cost import COST_METRICS, COST_PARAMS
from experiments.trial import AXES, DEFAULT_POSITION

CELL = ["task", "family", "size", "layers", "position", "control"]
# What a cell cost: the trial's numeric cost keys (``experiments.cost``) and trial_hours
# (the run's wall time), averaged over its finished seeds.
COST_COLUMNS = (*(c for c in (*COST_PARAMS, *COST_METRICS) if c != "device_name"),
                "trial_hours")
BOOTSTRAP_SAMPLES = 10_000
CONFIDENCE = 0.95
MIN_PAIRS = 3  # for a cell to be called significant


def interval_label(n: int) -> str:
    """What an interval over ``n`` values is: a bootstrap "95% CI" with ``MIN_PAIRS`` or more,
    "range of 2" with two (a percentile bootstrap of two values is their min and max), and
    nothing ("") with fewer (no interval is shown)."""
    n = int(n) if pd.notna(n) else 0
    if n >= MIN_PAIRS:
        return f"{CONFIDENCE:.0%} CI"
    return f"range of {n}" if n >= 2 else ""


def bootstrap_ci(values, samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; NaNs with fewer than two values."""
    lo, hi = bootstrap_cis([np.asarray(list(values), dtype=float)], samples, confidence, seed)
    return float(lo[0]), float(hi[0])


def bootstrap_cis(groups: list[np.ndarray], samples: int = BOOTSTRAP_SAMPLES,
                  confidence: float = CONFIDENCE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``bootstrap_ci`` of each group, equal to it value for value, computed a block of groups
    of one size at a time (a study has thousands of cells: one call each cost seconds).

    Each group's resampling starts from the same ``seed``, so groups of one size share one
    matrix of draws: the interval of a cell does not depend on which other cells are
    reported beside it."""
    lo = np.full(len(groups), np.nan)
    hi = np.full(len(groups), np.nan)
    tail = (1 - confidence) / 2 * 100
    by_size: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_size.setdefault(len(g), []).append(i)
    for n, members in by_size.items():
        if n < 2:
            continue
        x = np.stack([np.asarray(groups[i], dtype=float) for i in members])
        if n == 2:  # what the bootstrap gives for two values, exactly: their range
            lo[members], hi[members] = x.min(axis=1), x.max(axis=1)
            continue
        draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
        block = max(1, 2_000_000 // (samples * n))  # ~16 MB of resampled values at a time
        for s in range(0, len(members), block):
            means = x[s:s + block][:, draws].mean(axis=2)
            q = np.percentile(means, [tail, 100 - tail], axis=1)
            idx = members[s:s + block]
            lo[idx], hi[idx] = q[0], q[1]
    return lo, hi


def best_hparams(df: pd.DataFrame, metric: str = "val_acc", higher: bool = True) -> pd.DataFrame:
    """One row per (cell, seed): where a hyperparameter search ran several trials of it, the
    FINISHED one with the best ``metric`` (else the latest failure); ``hparam_trials`` says
    how many there were, so a reader sees what was selected from."""
    if df.empty:
        return df.assign(hparam_trials=pd.Series(dtype=int))
    df = with_positions(df)
    worst = float("-inf") if higher else float("inf")
    ranked = df.assign(_done=df["status"].eq("FINISHED"), _m=df[metric].fillna(worst))
    counts = ranked.groupby(list(AXES))["run_id"].transform("size")
    ranked = ranked.assign(hparam_trials=counts).sort_values(
        ["_done", "_m"], ascending=[False, not higher])
    return ranked.drop_duplicates(list(AXES)).drop(columns=["_done", "_m"]).sort_index()


def with_positions(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``position`` column: runs from before the axis ran at the ``end``; a
    cell without an LM has none ("")."""
    if "position" in df:
        return df
    return df.assign(position=np.where(df["family"].fillna("") != "", DEFAULT_POSITION, ""))


def position_order(position: str) -> float:
    """Where a position sorts: the paper's end, middle, start, then after block 0, 1, ..."""
    named = {DEFAULT_POSITION: -3, "middle": -2, "start": -1, "": -4}
    return float(named.get(position, int(position) if str(position).lstrip("-").isdigit()
                           else 1e9))


def summarize(df: pd.DataFrame, metric: str = "val_acc", control: str = "none",
              higher: bool = True) -> pd.DataFrame:
    """Per cell: mean, std, n over FINISHED seeds; failed and missing seeds; paired
    difference against ``control`` with its bootstrap interval and significance; the
    information-filtering concentration and best-threshold mIoU before/after the block and
    their gains.

    Computed column by column over all cells at once (grouped pandas reductions, the
    bootstrap by block), not cell by cell: a 20k-trial study has thousands of cells, and a
    loop of per-cell DataFrame slices cost ~5 ms a cell."""
    if control not in reference_controls():
        raise ValueError(f"unknown control {control!r}; valid: {', '.join(reference_controls())}")
    df = with_positions(best_hparams(df, metric, higher))
    expected = df.groupby("task")["seed"].agg(lambda s: len(set(s)))  # seeds run for a task
    # A cell's id in order of first appearance; rows with a missing key are in no cell.
    if not df.empty:
        df = df.assign(_cell=df.groupby(CELL, sort=False).ngroup())
        df = df[df["_cell"] >= 0]
    if df.empty:
        out = pd.DataFrame()
        out.attrs.update(metric=metric, control=control, higher=higher)
        return out
    cells = np.arange(df["_cell"].max() + 1)
    done = df[df["status"] == "FINISHED"]

    def per_cell(series: pd.Series, how: str) -> np.ndarray:
        """``how`` over each cell's finished runs (NaN for a cell with none)."""
        return series.groupby(done["_cell"]).agg(how).reindex(cells).to_numpy()

    first = df.drop_duplicates("_cell").set_index("_cell").sort_index()
    n = done.groupby("_cell").size().reindex(cells, fill_value=0).to_numpy()
    seed_done = pd.MultiIndex.from_frame(df[["_cell", "seed"]]).isin(
        pd.MultiIndex.from_frame(done[["_cell", "seed"]]))
    failed = pd.Series(~seed_done, index=df.index).groupby(df["_cell"]).sum()
    tried = df.groupby("_cell")["seed"].nunique(dropna=False)

    # Paired differences against the control: a finished seed of a non-control cell minus
    # the control's finished seed of the same key (its first, where a key has several).
    key = list(get_control(control).pair_on)
    base = done[done["control"] == control].drop_duplicates(key)[[*key, metric]]
    left = done[done["control"] != control][["_cell", *key, metric]].assign(
        _pos=np.arange((done["control"] != control).sum()))
    pairs = left.merge(base.rename(columns={metric: "_base"}), on=key, how="inner")
    pairs = pairs.sort_values("_pos", kind="stable")  # each cell's seeds in its rows' order
    diffs_of = dict.fromkeys(cells.tolist(), np.empty(0))
    diffs_of.update({c: g.to_numpy(dtype=float) for c, g in
                     (pairs[metric] - pairs["_base"]).groupby(pairs["_cell"].to_numpy())})
    diffs = list(diffs_of.values())
    ci_lo, ci_hi = bootstrap_cis(diffs)
    values_of = dict.fromkeys(cells.tolist(), np.empty(0))
    values_of.update({c: g.to_numpy(dtype=float) for c, g in done[metric].groupby(done["_cell"])})
    mean_lo, mean_hi = bootstrap_cis(list(values_of.values()))
    n_pairs = np.array([len(d) for d in diffs])
    delta = np.array([float(np.mean(d)) if len(d) else np.nan for d in diffs])

    out = pd.DataFrame({
        **{c: first[c].to_numpy() for c in CELL},
        "layer_index": first["layer_index"].to_numpy(),
        "lm_params": first["lm_params"].to_numpy(),
        "mean": per_cell(done[metric], "mean"),
        "std": per_cell(done[metric], "std"),
        "mean_lo": mean_lo,  # bootstrap 95% interval of the mean over seeds
        "mean_hi": mean_hi,
        "n": n,
        "failed": failed.reindex(cells, fill_value=0).to_numpy().astype(int),
        "missing": (first["task"].map(expected).to_numpy() - tried.reindex(cells).to_numpy()
                    ).astype(int),
        "delta": delta,
        "ci_lo": ci_lo,
        "ci_hi": ci_hi,
        "pairs": n_pairs,
        "significant": (n_pairs >= MIN_PAIRS) & ((ci_lo > 0) | (ci_hi < 0)),
        "hparam_trials": first.index.map(df.groupby("_cell")["hparam_trials"].max()).astype(int),
    })
    for kind, name in itertools.product(("conc", "miou"), ("act", "freq", "freq_centred")):
        b, a = f"{kind}_{name}_before", f"{kind}_{name}_after"
        if b in done and a in done:
            out[b] = per_cell(done[b], "mean")
            out[a] = per_cell(done[a], "mean")
            out[f"{kind}_{name}_gain"] = per_cell(done[a] - done[b], "mean")
    for col in ("conc_cls_attn", "conc_lm_cls_attn", "miou_cls_attn", "miou_lm_cls_attn"):
        if col in done:
            out[col] = per_cell(done[col], "mean")
    for col in ("block_cka_init", "block_cka", "grad_coherence_init", "grad_coherence"):
        if col in done:  # Bai et al.'s measures (experiments/block_measures.py)
            out[col] = per_cell(pd.to_numeric(done[col], errors="coerce"), "mean")
    for col in COST_COLUMNS:  # what the cell cost, per trial, over its finished seeds
        if col in done:
            out[col] = per_cell(pd.to_numeric(done[col], errors="coerce"), "mean")
    out.attrs.update(metric=metric, control=control, higher=higher)
    out["_order"] = out["control"].map(list_controls().index)
    out["_place"] = out["position"].map(position_order)
    return out.sort_values(["task", "family", "_order", "lm_params", "layer_index", "_place"],
                           na_position="first").drop(columns=["_order", "_place"]
                                                     ).reset_index(drop=True)
