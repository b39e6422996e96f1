"""Per cell: has it converged? Each finished run's per-epoch metric judged by the plateau
rule (``experiments.plateau``, the rule ``--epochs auto`` stops trials by), counted per cell:
*not converged* when most of its judged seeds (more than half) are still improving,
*converged* when not, *unknown* when none can be judged; and *did not learn*, whatever
its plateau, when most of its seeds ended with the training loss within 2% of chance
(ln C: ``experiments.plateau.stayed_at_chance``; the trial logs ``chance_loss``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.plateau import stayed_at_chance, still_improving
from results.run_table import metric_histories
from results.stats import CELL, with_positions


def load_histories(client, df: pd.DataFrame, metric: str) -> dict[str, list[float]]:
    """Per FINISHED run, the metric's per-epoch values in step order (the last value logged
    at a step wins: a retried epoch); on a SQL store in one query per 500 runs."""
    return metric_histories(client, list(df.loc[df["status"] == "FINISHED", "run_id"]), metric)


def convergence(runs: pd.DataFrame, histories: dict[str, list[float]] | None,
                higher: bool = True) -> pd.DataFrame:
    """Per cell: seeds, judged seeds, still-improving seeds and its status (converged, not
    converged, unknown)."""
    columns = [*CELL, "seeds", "judged", "improving", "at_chance", "status"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    runs = with_positions(runs)
    # One flag a run (None: too short to judge), then counted per cell by grouped sums: a
    # study has thousands of cells, and a DataFrame slice a cell cost seconds.
    flags = [still_improving((histories or {}).get(r), higher) for r in runs["run_id"]]
    losses = runs["train_loss"] if "train_loss" in runs else pd.Series(None, index=runs.index)
    chance = runs["chance_loss"] if "chance_loss" in runs else pd.Series(None, index=runs.index)
    stuck = [stayed_at_chance([loss], c) for loss, c in zip(
        pd.to_numeric(losses, errors="coerce"), pd.to_numeric(chance, errors="coerce"),
        strict=True)]
    per_run = pd.DataFrame({"judged": [f is not None for f in flags],
                            "improving": [bool(f) for f in flags],
                            "at_chance": [bool(f) for f in stuck]}, index=runs.index)
    cells = runs.groupby(CELL, sort=False)
    counts = per_run.groupby([runs[c] for c in CELL], sort=False).sum()
    out = cells.size().rename("seeds").to_frame().join(counts).reset_index()
    out["judged"] = out["judged"].astype(int)
    out["improving"] = out["improving"].astype(int)
    out["at_chance"] = out["at_chance"].astype(int)
    out["status"] = np.where(out["at_chance"] > out["seeds"] / 2, "did not learn",
                             np.where(out["judged"] == 0, "unknown",
                                      np.where(out["improving"] > out["judged"] / 2,
                                               "not converged", "converged")))
    return out[columns]
