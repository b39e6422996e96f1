"""Per-cell statistics over seeds, and paired comparisons against a control with bootstrap
confidence intervals: the numbers behind every claim a report makes.

A *cell* is (task, family, size, layers, control); its seeds are repeats. A cell is compared
with the chosen control seed by seed (same task and seed; for the ``adapters`` and ``random``
controls also the same family and size, since those controls are sized like the LM), and the
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
from experiments.trial import AXES

CELL = ["task", "family", "size", "layers", "control"]
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
    x = np.asarray(list(values), dtype=float)
    if len(x) < 2:
        return float("nan"), float("nan")
    if len(x) == 2:  # what the bootstrap gives for two values, exactly: their range
        return float(x.min()), float(x.max())
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def best_hparams(df: pd.DataFrame, metric: str = "val_acc", higher: bool = True) -> pd.DataFrame:
    """One row per (cell, seed): where a hyperparameter search ran several trials of it, the
    FINISHED one with the best ``metric`` (else the latest failure); ``hparam_trials`` says
    how many there were, so a reader sees what was selected from."""
    if df.empty:
        return df.assign(hparam_trials=pd.Series(dtype=int))
    worst = float("-inf") if higher else float("inf")
    ranked = df.assign(_done=df["status"].eq("FINISHED"), _m=df[metric].fillna(worst))
    counts = ranked.groupby(list(AXES))["run_id"].transform("size")
    ranked = ranked.assign(hparam_trials=counts).sort_values(
        ["_done", "_m"], ascending=[False, not higher])
    return ranked.drop_duplicates(list(AXES)).drop(columns=["_done", "_m"]).sort_index()


def summarize(df: pd.DataFrame, metric: str = "val_acc", control: str = "none",
              higher: bool = True) -> pd.DataFrame:
    """Per cell: mean, std, n over FINISHED seeds; failed and missing seeds; paired
    difference against ``control`` with its bootstrap interval and significance; the
    information-filtering concentration and best-threshold mIoU before/after the block and
    their gains."""
    if control not in reference_controls():
        raise ValueError(f"unknown control {control!r}; valid: {', '.join(reference_controls())}")
    df = best_hparams(df, metric, higher)
    done = df[df["status"] == "FINISHED"]
    key = list(get_control(control).pair_on)
    base = done[done["control"] == control].set_index(key)[metric]
    base = base[~base.index.duplicated()]
    expected = df.groupby("task")["seed"].agg(lambda s: set(s))
    rows = []
    for cell, grp in df.groupby(CELL, sort=False):
        ok = grp[grp["status"] == "FINISHED"]
        seeds_tried = set(grp["seed"])
        diffs = []
        if grp["control"].iloc[0] != control:
            for _, r in ok.iterrows():
                k = tuple(r[c] for c in key)
                if k in base.index:
                    diffs.append(r[metric] - base[k])
        lo, hi = bootstrap_ci(diffs)
        mean_lo, mean_hi = bootstrap_ci(ok[metric])
        row = {
            **dict(zip(CELL, cell, strict=True)),
            "layer_index": grp["layer_index"].iloc[0],
            "lm_params": grp["lm_params"].iloc[0],
            "mean": ok[metric].mean(),
            "std": ok[metric].std(ddof=1) if len(ok) > 1 else float("nan"),
            "mean_lo": mean_lo,  # bootstrap 95% interval of the mean over seeds
            "mean_hi": mean_hi,
            "n": len(ok),
            "failed": int((~grp["seed"].isin(ok["seed"])).sum()),
            "missing": len(expected[cell[0]] - seeds_tried),
            "delta": float(np.mean(diffs)) if diffs else float("nan"),
            "ci_lo": lo,
            "ci_hi": hi,
            "pairs": len(diffs),
            "significant": bool(len(diffs) >= MIN_PAIRS and (lo > 0 or hi < 0)),
            "hparam_trials": int(grp["hparam_trials"].max()),
        }
        for kind, name in itertools.product(("conc", "miou"), ("act", "freq", "freq_centred")):
            b, a = f"{kind}_{name}_before", f"{kind}_{name}_after"
            if b in ok and a in ok:
                row[f"{b}"] = ok[b].mean()
                row[f"{a}"] = ok[a].mean()
                row[f"{kind}_{name}_gain"] = (ok[a] - ok[b]).mean()
        for col in ("conc_cls_attn", "conc_lm_cls_attn", "miou_cls_attn", "miou_lm_cls_attn"):
            if col in ok:
                row[col] = ok[col].mean()
        for col in COST_COLUMNS:  # what the cell cost, per trial, over its finished seeds
            if col in ok:
                row[col] = pd.to_numeric(ok[col], errors="coerce").mean()
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(metric=metric, control=control, higher=higher)
    if out.empty:
        return out
    out["_order"] = out["control"].map(list_controls().index)
    return out.sort_values(["task", "family", "_order", "lm_params", "layer_index"],
                           na_position="first").drop(columns="_order").reset_index(drop=True)
