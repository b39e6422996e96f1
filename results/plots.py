"""The report's figures (PNG, matplotlib), each titled and labelled for a reader without the
code: metric vs layer with interval bands, metric vs model size (log x), a layer x size heat
map of the gain over the control, the probe's activation maps per control, and accuracy gain
against concentration gain (the information-filtering hypothesis)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from encoders.lm.controls import get_control, list_controls
from experiments.trial import DEFAULT_POSITION
from results.stats import interval_label, with_positions
from results.tables import fixed_layer, layer_controls, positions_in_order


def _label(control: str) -> str:
    """The controls table's name for it (a control this install does not know: as stored)."""
    return get_control(control).label if control in list_controls() else control


def _metric_label(summary: pd.DataFrame) -> str:
    return f"final {summary.attrs.get('metric', 'val_acc').replace('_', ' ')}"


def interval_words(ns) -> str:
    """What the drawn intervals over seeds are, by each cell's n (``stats.interval_label``):
    "95% CI over seeds", "range of 2 seeds", both when cells differ, "" when none is drawn."""
    labels = sorted({interval_label(n) for n in ns} - {""}, key=lambda lab: "CI" not in lab)
    words = [f"{lab} over seeds" if "CI" in lab else f"{lab} seeds" for lab in labels]
    return "; ".join(words)


def text_colour(rgba) -> str:
    """Black or white, whichever reads better on a cell of this colour: by the colour's
    relative luminance (sRGB, WCAG), white below 0.179 (where the two contrasts are equal)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return "white" if luminance < 0.179 else "black"


# Past these, a figure's legend or its cells' printed values cannot be read (a study of
# thousands of cells), and drawing them was most of the report's time: the legend is
# replaced by a line naming the table that holds the same numbers.
LEGEND_MAX = 24
ANNOTATE_MAX = 300


def _legend(ax, table: str) -> None:
    """The legend, or where there are too many entries to read, a note saying so."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries <= LEGEND_MAX:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.01, 0.01, f"{entries} lines, too many to name here: see {table}",
                transform=ax.transAxes, fontsize=8, va="bottom",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finish_lines(fig, ax, summary: pd.DataFrame, ns, title: str, table: str,
                  path: Path) -> Path:
    """A line figure's y label (the metric; the bands' intervals by the cells' n), title,
    grid and legend (or the table that names its lines), saved."""
    _finish_axes(ax, summary, ns, title, table)
    return _save(fig, path)


def _finish_axes(ax, summary: pd.DataFrame, ns, title: str, table: str) -> None:
    """One axes' y label (the metric; the bands' intervals by the cells' n), title, grid and
    legend (or the table that names its lines)."""
    band = interval_words(ns)
    ax.set_ylabel(f"{_metric_label(summary)} (mean" + (f"; band: {band})" if band else ")"),
                  fontsize=9)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, table)


def metric_vs_layer(summary: pd.DataFrame, path: Path) -> Path:
    """One panel a task (tasks differ in metric and range: pooled on one axes, a task's
    lines would flatten another's), each with its swept cells' lines and the controls'
    levels."""
    swept_all = summary["control"].isin(layer_controls())
    tasks = list(dict.fromkeys(summary.loc[swept_all, "task"])) or list(
        dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(len(tasks), 1, figsize=(7.5, 4.5 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        part = summary[summary["task"] == task]
        swept = part["control"].isin(layer_controls())
        for (family, size, control), grp in part[swept].groupby(
                ["family", "size", "control"], sort=False):
            grp = grp.sort_values("layer_index")
            line, = ax.plot(grp["layer_index"], grp["mean"], marker="o",
                            label=f"{family}-{size}, {control}")
            if grp["mean_lo"].notna().any():
                ax.fill_between(grp["layer_index"], grp["mean_lo"], grp["mean_hi"],
                                color=line.get_color(), alpha=0.2)
        for _, row in part[~swept].iterrows():  # the controls: one level each
            control = get_control(row["control"])
            color, style = control.style
            lm = f"{row['family']}-{row['size']} " if control.per_lm else ""
            ax.axhline(row["mean"], color=color, linestyle=style, label=f"{lm}{control.label}")
        ax.set_xlabel("index of the frozen LM layer inserted after the last visual block")
        _finish_axes(ax, part, part.loc[swept, "n"], f"Which layer helps ({task})\n"
                     "validation metric by layer, against the controls", "by_layer.csv")
    return _save(fig, path)


def metric_vs_size(summary: pd.DataFrame, path: Path, layer: str = "last") -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    pre = fixed_layer(summary, layer).dropna(subset=["lm_params", "mean"])  # mean: all failed
    for (task, family), grp in pre.groupby(["task", "family"], sort=False):
        grp = grp.sort_values("lm_params")
        err = np.vstack([grp["mean"] - grp["mean_lo"], grp["mean_hi"] - grp["mean"]])
        ax.errorbar(grp["lm_params"], grp["mean"], yerr=np.nan_to_num(err), marker="o",
                    capsize=3, label=f"{family} ({task})")
        for _, r in grp.iterrows():
            ax.annotate(r["size"], (r["lm_params"], r["mean"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    for _, row in summary[summary["control"].map(lambda c: not get_control(c).per_lm)].iterrows():
        control = get_control(row["control"])  # no LM, so no size: a level across all sizes
        color, style = control.style
        ax.axhline(row["mean"], color=color, linestyle=style,
                   label=f"{control.label} ({row['task']})")
    if not pre.empty:  # a log axis without data cannot be drawn
        ax.set_xscale("log")
    ax.set_xlabel("parameters of the language model the block comes from (log scale)")
    bars = interval_words(pre["n"])
    ax.set_ylabel(f"{_metric_label(summary)} (mean" + (f"; bars: {bars})" if bars else ")"),
                  fontsize=9)
    ax.set_title(f"Do larger LMs help? Pretrained block at layer '{layer}' of each size")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, "by_size.csv")
    return _save(fig, path)


def heatmap_grid(pre: pd.DataFrame, value: str) -> tuple[np.ndarray, list, list[str]]:
    """One task's grid: rows the layer indices, columns the LMs (``family-size``, each
    family's sizes by parameters), values ``value`` (NaN: no such cell)."""
    cols = pre.sort_values(["family", "lm_params"])[["family", "size"]].drop_duplicates()
    labels = [f"{f}-{s}" for f, s in zip(cols["family"], cols["size"], strict=True)]
    layers = sorted(pre["layer_index"].dropna().unique())
    grid = np.full((len(layers), len(labels)), np.nan)
    row_of = {v: i for i, v in enumerate(layers)}
    col_of = {lab: j for j, lab in enumerate(labels)}
    for layer, family, size, v in zip(pre["layer_index"], pre["family"], pre["size"],
                                      pre[value], strict=True):
        if pd.notna(layer):
            grid[row_of[layer], col_of[f"{family}-{size}"]] = v
    return grid, layers, labels


def delta_bound(grid: np.ndarray, cells: pd.DataFrame) -> float:
    """Half the range of a gain heat map's symmetric colour scale, centred on 0: the largest
    gain, but at least the widest confidence interval among the cells and at least 1% of
    the metric's typical value (a floor where one seed gives no interval), so that gains
    inside the noise are pale: a scale fitted to the largest gain alone paints +0.000 and
    -1e-8 as opposite extremes."""
    largest = float(np.nanmax(np.abs(grid)))
    widths = (cells["ci_hi"] - cells["ci_lo"]).abs() if {"ci_lo", "ci_hi"} <= set(cells) else []
    widest = float(np.nanmax(widths)) if len(widths) and np.isfinite(widths).any() else 0.0
    typical = float(np.nanmedian(cells["mean"].abs())) if "mean" in cells else 0.0
    return max(largest, widest, 0.01 * typical if np.isfinite(typical) else 0.0, 1e-6)


def layer_size_heatmap(summary: pd.DataFrame, path: Path) -> Path:
    """One heat map a task (a task's cells would otherwise overwrite another's at one layer
    and LM), each with its own colour scale (tasks differ in metric and range). Rows: layer
    index; columns: sizes of each family (by parameters); colour: the paired gain over the
    control (the mean where no cell has a pair)."""
    pre = summary[summary["control"].isin(layer_controls())]
    use_delta = pre["delta"].notna().any()
    value = "delta" if use_delta else "mean"
    control = summary.attrs.get("control", "none")
    what = f"gain over '{_label(control)}'" if use_delta else "mean metric"
    panels = [(task, *heatmap_grid(grp, value))
              for task, grp in pre.groupby("task", sort=True)]
    width = max(6.5, 2.5 + 1.2 * max(len(labels) for *_, labels in panels))
    # 0.4 in a layer, at most 16 in a panel (a 64-layer LM): a study of many tasks stays
    # a figure that can be drawn and scrolled
    heights = [2 + min(16, 0.4 * max(1, len(layers))) for _, _, layers, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    cmap = matplotlib.colormaps["RdBu" if use_delta else "viridis"].with_extremes(
        bad="#d9d9d9")  # grey: no such cell (white would read as a gain of 0)
    for ax, (task, grid, layers, labels) in zip(axes[:, 0], panels, strict=True):
        bound = (delta_bound(grid, pre[pre["task"] == task])
                 if use_delta and np.isfinite(grid).any() else None)
        im = ax.imshow(grid, aspect="auto", cmap=cmap,
                       vmin=-bound if bound else None, vmax=bound if bound else None)
        for i in range(grid.shape[0] if grid.size <= ANNOTATE_MAX else 0):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):  # black on light cells, white on dark ones
                    ax.text(j, i, f"{grid[i, j]:+.3f}" if use_delta else f"{grid[i, j]:.3f}",
                            ha="center", va="center", fontsize=8,
                            color=text_colour(im.cmap(im.norm(grid[i, j]))))
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), [str(int(v)) for v in layers], fontsize=8)
        ax.set_xlabel("language model (family-size, by parameters)")
        ax.set_ylabel("frozen layer index")
        ax.set_title(f"Layer x model size: {what} (task {task})")
        fig.colorbar(im, ax=ax, label=what)
    return _save(fig, path)


def activation_maps(maps_by_control: dict[str, dict], path: Path, samples: int = 4) -> Path:
    """Rows: probe samples; columns: the input, then the token activation after the block
    for each control (each map over the patch grid, scaled per map)."""
    controls = list(maps_by_control)
    first = next(iter(maps_by_control.values()))
    n = min(samples, len(first["inputs"]))
    fig, axes = plt.subplots(n, 1 + len(controls), figsize=(1.9 * (1 + len(controls)), 1.9 * n),
                             squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(np.array(first["inputs"][i]), cmap="gray_r")
        axes[i, 0].set_title("input" if i == 0 else "", fontsize=8)
        for j, control in enumerate(controls):
            act = np.array(maps_by_control[control]["act_after"][i])
            side = round(len(act) ** 0.5)
            axes[i, j + 1].imshow(act.reshape(side, side), cmap="magma")
            if i == 0:
                axes[i, j + 1].set_title(control, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Token activation (L2 norm, centred) after the block, per control", fontsize=9)
    return _save(fig, path)


def token_activation_strips(maps_by_control: dict[str, dict], path: Path,
                            samples: int = 4) -> Path:
    """For tokens that are not a square image grid (point-cloud patches, video tubes): one
    panel per control, rows = probe samples, columns = tokens in the encoder's order, colour =
    activation after the block (each row scaled to its maximum); dots mark informative
    tokens, so concentration can be seen."""
    controls = list(maps_by_control)
    fig, axes = plt.subplots(len(controls), 1, figsize=(9, 1.2 + 0.45 * samples * len(controls)),
                             squeeze=False)
    for ax, control in zip(axes[:, 0], controls, strict=True):
        maps = maps_by_control[control]
        act = np.array(maps["act_after"][:samples], dtype=float)
        act = act / np.maximum(act.max(axis=1, keepdims=True), 1e-12)
        ax.imshow(act, aspect="auto", cmap="magma", vmin=0, vmax=1)
        info = np.array(maps["informative"][:samples], dtype=bool)
        rows, cols = np.nonzero(info)
        ax.scatter(cols, rows, s=6, c="cyan", marker="o", label="informative token")
        ax.set_ylabel(control, fontsize=8)
        ax.set_yticks(range(len(act)), [f"probe {i}" for i in range(len(act))], fontsize=6)
    axes[-1, 0].set_xlabel("token (the encoder's order)")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Token activation after the block (row-normalised); dots: informative tokens",
                 fontsize=9)
    return _save(fig, path)


def _gain_scatter(summary: pd.DataFrame, x: str, xlabel: str, title: str,
                  versus: str = "the control") -> tuple:
    """Each cell but the reference control's: ``x`` against its gain (``delta``), one colour
    per control, each point named by its layer (or control); returns (figure, axes)."""
    control = summary.attrs.get("control", "none")
    cells = (summary[summary["control"] != control].dropna(subset=["delta", x])
             if x in summary else summary.iloc[:0])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, grp in cells.groupby("control"):
        ax.scatter(grp[x], grp["delta"], label=_label(name))
        for _, r in grp.iterrows():
            tag = f"L{r['layers']}" if r["layers"] else r["control"]
            if r.get("position", "") not in ("", DEFAULT_POSITION):
                tag += f"@{r['position']}"
            ax.annotate(tag, (r[x], r["delta"]), fontsize=7, textcoords="offset points",
                        xytext=(3, 3))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    better = "" if summary.attrs.get("higher", True) else " (lower is better)"
    ax.set_ylabel(f"change in {_metric_label(summary)} over {versus}{better}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(cells):
        ax.legend(fontsize=8)
    return fig, ax


def gain_vs_concentration(summary: pd.DataFrame, path: Path) -> Path:
    fig, ax = _gain_scatter(
        summary, "conc_act_gain",
        "concentration gain: share of activation on informative tokens, after - before",
        "Information filtering: does concentrating activation go with the metric?")
    ax.axvline(0, color="grey", lw=0.8)
    return _save(fig, path)


def similarity_vs_gain(summary: pd.DataFrame, rho: pd.DataFrame, path: Path) -> Path:
    """Bai et al.'s predictor: each cell's initial block-encoder CKA against its gain over
    no block, one colour per control; the rank correlation in the title."""
    overall = rho.iloc[-1] if len(rho) else None
    said = ("" if overall is None or not np.isfinite(overall["spearman_rho"]) else
            f"\nSpearman rho {overall['spearman_rho']:+.2f} "
            f"[{overall['ci_lo']:+.2f}, {overall['ci_hi']:+.2f}] over {overall['cells']} cells")
    fig, _ = _gain_scatter(
        summary, "block_cka_init",
        "linear CKA of the block's output with its input, before training",
        f"Does the initial similarity predict the gain?{said}", "no block")
    return _save(fig, path)


def metric_vs_position(summary: pd.DataFrame, path: Path) -> Path:
    """Table D as a figure: the metric at each position the sweep ran (the paper's order:
    end, middle, start, then after block i), a line per LM, layer and control, its band the
    interval over seeds; the no-block cell of each task as a level."""
    summary = with_positions(summary)
    order = positions_in_order(summary)
    at = {p: i for i, p in enumerate(order)}
    placed = summary[summary["position"].isin(order)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (task, family, size, layers, control), grp in placed.groupby(
            ["task", "family", "size", "layers", "control"], sort=False):
        grp = grp.assign(_x=grp["position"].map(at)).sort_values("_x")
        layer = f" L{layers}" if layers else ""
        line, = ax.plot(grp["_x"], grp["mean"], marker="o",
                        label=f"{family}-{size}{layer}, {_label(control)} ({task})")
        if grp["mean_lo"].notna().any():
            ax.fill_between(grp["_x"], grp["mean_lo"], grp["mean_hi"], color=line.get_color(),
                            alpha=0.2)
    for _, row in summary[summary["family"] == ""].iterrows():
        color, style = get_control(row["control"]).style if row["control"] in list_controls() \
            else ("grey", "--")
        ax.axhline(row["mean"], color=color, linestyle=style,
                   label=f"{_label(row['control'])} ({row['task']})")
    ax.set_xticks(range(len(order)), [p if not p.lstrip("-").isdigit() else f"after {p}"
                                      for p in order])
    ax.set_xlabel("where the block runs in the encoder (start: before its first block; "
                  "after i: after block i)", fontsize=9)
    return _finish_lines(fig, ax, summary, placed["n"], "Where the block goes (the paper's "
                         "Table D): metric by position", "by_position.csv", path)
