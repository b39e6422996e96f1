"""The paper's three ablation tables, generated from a per-cell summary.

1. metric by layer index, per family and size (which layer helps);
2. metric by model size, per family, at one fixed layer (do only large LMs help?);
3. task x control: no block, the adapters alone, a random frozen block, the pretrained block.

Each cell reads ``mean ± std (Δ +d, 95% CI [lo, hi]*)``: Δ is the paired difference against
the chosen control with its interval, labelled by the number of pairs n (``95% CI``, the
bootstrap, with n >= 3; ``range of 2``, the two differences' min and max, with n = 2; none
with n = 1), ``*`` marks a 95% CI excluding zero, and failed or missing seeds are written
out, never dropped.

Tables 1-3 are of the paper's method: the block at the encoder's ``end``. ``by_position``
(the paper's Table D) has every position a sweep ran.

Next to them, ``cost_table``: what each cell cost (parameters, GFLOPs per sample, samples
per second, trial-hours), which the paper's reviewers asked for alongside accuracy.
"""

from __future__ import annotations

import pandas as pd

from encoders.lm.controls import get_control, list_controls
from experiments.trial import DEFAULT_POSITION
from results.runs import last_layer
from results.stats import interval_label, position_order, with_positions


def layer_controls() -> list[str]:
    """The arms with one cell per layer (the pretrained block): tables 1 and 2 are theirs."""
    return [c for c in list_controls() if get_control(c).layers == "each"]


def cell_text(row: pd.Series) -> str:
    if row["n"] == 0:
        text = "—"
    else:
        text = f"{row['mean']:.3f}"
        if row["n"] > 1:
            text += f" ± {row['std']:.3f}"
    if pd.notna(row.get("delta")):
        star = "*" if row["significant"] else ""
        label = interval_label(row.get("pairs", 0))
        if pd.notna(row["ci_lo"]) and label:
            text += (f" (Δ {row['delta']:+.3f}, {label} [{row['ci_lo']:+.3f}, "
                     f"{row['ci_hi']:+.3f}]{star})")
        else:
            text += f" (Δ {row['delta']:+.3f})"
    if row["failed"]:
        text += f" [{row['failed']} failed]"
    if row["missing"]:
        text += f" [{row['missing']} missing]"
    if row.get("hparam_trials", 1) > 1:
        text += f" [best of {row['hparam_trials']}]"
    return text


def _blank(s: pd.Series) -> pd.Series:
    return s.replace("", "-")


def _sizes_in_order(summary: pd.DataFrame) -> list[str]:
    sized = summary[summary["size"] != ""].sort_values("lm_params")
    return list(dict.fromkeys(sized["size"]))


def by_layer(summary: pd.DataFrame) -> pd.DataFrame:
    """Table 1: rows task, family, layer selection; columns model size (pretrained block;
    a control column too when several arms sweep the layers)."""
    pre = summary[summary["control"].isin(layer_controls())].sort_values("layer_index")
    if pre.empty:
        return pd.DataFrame()
    index = ["task", "family", "layers"]
    if pre["control"].nunique() > 1:
        index.append("control")
    t = pre.assign(cell=pre.apply(cell_text, axis=1)).pivot_table(
        index=index, columns="size", values="cell", aggfunc="first", sort=False)
    t = t[[s for s in _sizes_in_order(pre) if s in t.columns]]
    return t.fillna("").reset_index().rename_axis(columns=None)


def fixed_layer(summary: pd.DataFrame, layer: str = "last") -> pd.DataFrame:
    """The pretrained cells (every arm with a cell per layer) at one layer of every size:
    ``last`` (each size's own last layer: sizes differ in depth), or an index such as ``0``,
    or a label such as ``3:5``."""
    pre = summary[summary["control"].isin(layer_controls())]
    if layer == "last":
        keep = [str(last_layer(f, s)) == lab for f, s, lab in
                zip(pre["family"], pre["size"], pre["layers"], strict=True)]
        return pre[keep]
    return pre[pre["layers"] == layer]


def by_size(summary: pd.DataFrame, layer: str = "last") -> pd.DataFrame:
    """Table 2: rows task, family; columns model size (by parameter count); one layer."""
    pre = fixed_layer(summary, layer)
    if pre.empty:
        return pd.DataFrame()
    t = pre.assign(cell=pre.apply(cell_text, axis=1)).pivot_table(
        index=["task", "family"], columns="size", values="cell", aggfunc="first", sort=False)
    t = t[[s for s in _sizes_in_order(pre) if s in t.columns]]
    return t.fillna("").reset_index().rename_axis(columns=None)


def by_control(summary: pd.DataFrame, layer: str = "last") -> pd.DataFrame:
    """Table 3: rows task, family, size; a column per control, the controls table's order
    reversed (none, adapters, random, pretrained: the pretrained block at ``layer``). A
    control with no LM (``none``) belongs to every family's row of its task."""
    controls = [get_control(c) for c in reversed(list_controls())]
    per_lm = [c.name for c in controls if c.per_lm and c.layers != "each"]
    no_lm = summary[summary["control"].isin([c.name for c in controls if not c.per_lm])]
    cells = pd.concat([fixed_layer(summary, layer), summary[summary["control"].isin(per_lm)]])
    if cells.empty and no_lm.empty:
        return pd.DataFrame()
    rows = []
    lms = cells[["task", "family", "size"]].drop_duplicates() if not cells.empty else (
        no_lm[["task"]].drop_duplicates().assign(family="", size=""))
    for _, lm in lms.iterrows():
        row = {"task": lm["task"], "family": lm["family"] or "-", "size": lm["size"] or "-"}
        for control in controls:
            src = no_lm if not control.per_lm else cells[
                (cells["family"] == lm["family"]) & (cells["size"] == lm["size"])]
            src = src[(src["task"] == lm["task"]) & (src["control"] == control.name)]
            label = f"{control.name} (layer {layer})" if control.layers == "each" else control.name
            row[label] = cell_text(src.iloc[0]) if len(src) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def without_empty_columns(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` less the columns with no cell (a control the sweep did not run): for the
    console and the sweep run's note, where the reader wants what ran."""
    return table.loc[:, (table.astype(str) != "").any()]


def filtering_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Accuracy gain next to concentration gain, per cell: the hypothesis' test."""
    summary = with_positions(summary)
    cols = ["conc_act_before", "conc_act_after", "conc_act_gain", "conc_freq_centred_gain",
            "conc_cls_attn", "miou_act_before", "miou_act_after", "miou_freq_centred_before",
            "miou_freq_centred_after", "miou_cls_attn", "miou_lm_cls_attn"]
    if "conc_act_gain" not in summary:
        return pd.DataFrame()
    t = summary[["task", "family", "size", "layers", "position", "control", "n", "mean",
                 "delta", *[c for c in cols if c in summary]]].copy()
    for c in ("family", "size", "layers", "position"):
        t[c] = _blank(t[c])
    return t.round(4)


def cost_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per cell: its metric next to its cost, per trial (means over finished seeds):
    frozen and trainable parameters (millions), GFLOPs per sample (forward; training step),
    training samples/s at the last epoch, the data-wait share, peak memory (GiB), MFU on a
    GPU, and trial-hours (each trial's wall time; ``total_hours`` = all its seeds)."""
    summary = with_positions(summary)
    if "gflops_train_step_per_sample" not in summary:
        return pd.DataFrame()
    t = summary[["task", "family", "size", "layers", "position", "control", "n", "mean"]].copy()
    for c in ("family", "size", "layers", "position"):
        t[c] = _blank(t[c])
    t["frozen_M"] = summary["frozen_params"] / 1e6
    t["trainable_M"] = summary["trainable_params"] / 1e6
    if "inserted_trainable_params" in summary:  # of the inserted module alone
        t["inserted_trainable_M"] = summary["inserted_trainable_params"] / 1e6
    if "visual_block_params" in summary and summary["visual_block_params"].notna().any():
        t["lm_block_M"] = summary["lm_block_params"] / 1e6  # visual-block: sized to this
        t["visual_block_M"] = summary["visual_block_params"] / 1e6
    t["gflops_fwd"] = summary["gflops_forward_per_sample"]
    t["gflops_step"] = summary["gflops_train_step_per_sample"]
    t["samples_per_s"] = summary["samples_per_s"]
    t["data_wait"] = summary.get("data_wait_share")
    t["peak_mem_gib"] = summary.get("peak_memory_bytes", float("nan")) / 2**30
    if "mfu" in summary and summary["mfu"].notna().any():
        t["mfu"] = summary["mfu"]
    if "trial_hours" in summary:
        t["trial_hours"] = summary["trial_hours"]
        t["total_hours"] = summary["trial_hours"] * summary["n"]
    return t.round({"mean": 4, "frozen_M": 3, "trainable_M": 3, "inserted_trainable_M": 3,
                    "lm_block_M": 3, "visual_block_M": 3, "gflops_fwd": 4,
                    "gflops_step": 4, "samples_per_s": 1, "data_wait": 3, "peak_mem_gib": 2,
                    "mfu": 3, "trial_hours": 4, "total_hours": 4})


def at_end(summary: pd.DataFrame) -> pd.DataFrame:
    """The cells of the paper's method: the block after the encoder's last block (and the
    cells without a block); what tables 1-3 and their figures show."""
    summary = with_positions(summary)
    return summary[summary["position"].isin([DEFAULT_POSITION, ""])]


def positions_in_order(summary: pd.DataFrame) -> list[str]:
    summary = with_positions(summary)
    placed = summary.loc[summary["position"] != "", "position"]
    return sorted(dict.fromkeys(placed), key=position_order)


def by_position(summary: pd.DataFrame) -> pd.DataFrame:
    """Table D: rows task, LM, layer selection and control; a column per position the sweep
    ran (end, middle, start, after block i), and the no-block cell of the task beside them;
    each cell with its paired difference against the reference control. Empty unless a
    sweep ran the block at two positions or more."""
    summary = with_positions(summary)
    placed = summary[summary["position"] != ""]
    order = positions_in_order(summary)
    if len(order) < 2:
        return pd.DataFrame()
    index = ["task", "family", "size", "layers", "control"]
    t = placed.assign(cell=placed.apply(cell_text, axis=1)).pivot_table(
        index=index, columns="position", values="cell", aggfunc="first", sort=False)
    t = t[[p for p in order if p in t.columns]].fillna("").reset_index().rename_axis(columns=None)
    none = summary[summary["family"] == ""]
    by_task = {task: cell_text(g.iloc[0]) for task, g in none.groupby("task", sort=False)}
    if by_task:
        t.insert(len(index), "no block", t["task"].map(by_task).fillna(""))
    return t
