"""``--prescreen K``: train only the cells Bai et al.'s predictor ranks highest.

Before any trial starts, every planned pretrained cell (LM, size, layer selection, position;
its first seed's model) is measured once (``experiments.prescreen.initial_similarity``: the
block's initial linear CKA with its input), ranked per task (highest first: Bai et al. find
that greater similarity tends to give larger gains), and only the top K per task are trained,
with every seed; every other control's trials run as planned. The ranking is printed by the
dry run, logged on the sweep run (``prescreen.json``) and tabled by the report: which cells
were screened out, at what rank and similarity, against the K-th kept.

Where this departs from Bai et al.: they choose blocks and positions by the similarity; the
paper does not fix a cut-off, so K is the user's; ties and cells that cannot be measured
(no value) rank last.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from experiments.trial import TrialSpec, task_label
from orchestrator.spec import SpecError

SCREENED = "pretrained"  # the control whose cells are ranked (the others are references)
ARTIFACT = "prescreen.json"


def cell_of(trial: TrialSpec) -> str:
    """A cell's identity: the trial's key at seed 0 (its seeds share it)."""
    return dataclasses.replace(trial, seed=0).key


def check_prescreen(k: int | None) -> None:
    if k is not None and k < 1:
        raise SpecError(f"bad --prescreen {k}; valid: an integer >= 1 (cells kept per task)")


def prescreen(plan: list[TrialSpec], k: int, weights_dir: str | Path | None = None,
              data_dir: str | Path | None = None):
    """(the plan less the screened-out cells' trials, the ranking: a DataFrame, one row per
    pretrained cell: task, family, size, layers, position, block_cka_init, rank, kept,
    reason; ``attrs["seconds"]``: what measuring took)."""
    import pandas as pd

    from experiments.prescreen import initial_similarity

    start = time.perf_counter()
    first: dict[str, TrialSpec] = {}
    for t in plan:
        if t.control == SCREENED:
            first.setdefault(cell_of(t), t)
    ordered = sorted(first.items(), key=lambda kv: (kv[1].family, kv[1].size, kv[1].layers))
    rows = []
    for cell, t in ordered:  # one layer after another: each read once, then from the cache
        value = initial_similarity(t, weights_dir, data_dir)
        rows.append({"cell": cell, "task": task_label(t.task, t.encoder), "family": t.family,
                     "size": t.size, "layers": t.layer_label, "position": t.position,
                     "block_cka_init": math.nan if value is None else value})
    table = pd.DataFrame(rows, columns=["cell", "task", "family", "size", "layers", "position",
                                        "block_cka_init"])
    table["rank"] = table.groupby("task")["block_cka_init"].rank(
        ascending=False, method="first", na_option="bottom").astype(int)
    table["kept"] = table["rank"] <= k
    kth = table[table["rank"] == k].set_index("task")["block_cka_init"]
    table["reason"] = [
        f"rank {r} of {n}: in the top {k}" if kept else
        f"screened out: rank {r} of {n}, initial CKA {v:.4f} below "
        f"{kth.get(task, math.nan):.4f} (rank {k}, the last kept)"
        for r, kept, v, task, n in zip(table["rank"], table["kept"], table["block_cka_init"],
                                       table["task"], table["task"].map(table["task"]
                                                                        .value_counts()),
                                       strict=True)]
    table = table.sort_values(["task", "rank"]).reset_index(drop=True)
    table.attrs["seconds"] = time.perf_counter() - start
    out = set(table.loc[~table["kept"], "cell"])
    kept = [t for t in plan if t.control != SCREENED or cell_of(t) not in out]
    return kept, table


def ranking_lines(table, k: int) -> list[str]:
    """What the dry run prints: the ranking per task, the cells screened out named."""
    shown = table.drop(columns="cell").assign(
        block_cka_init=table["block_cka_init"].map(lambda v: f"{v:.4f}"))
    out = int((~table["kept"]).sum())
    return ["", (f"prescreen (--prescreen {k}): initial linear CKA of the block with its input, "
            f"one probe batch per pretrained cell, ranked per task in "
            f"{table.attrs.get('seconds', 0):.1f} s; the top {k} per task train, "
            f"{out} cell(s) screened out (every seed)"), shown.to_string(index=False)]


def log_prescreen(tracking_uri: str, run_id: str, table) -> None:
    """The ranking on the sweep run, for the report (``results.build`` reads it back)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).log_dict(run_id, {
        "seconds": table.attrs.get("seconds", 0.0),
        "rows": table.drop(columns="cell").to_dict("records")}, ARTIFACT)
