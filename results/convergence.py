"""Per cell: has it converged? Each finished run's per-epoch metric judged by the plateau
rule (``experiments.plateau``, the rule ``--epochs auto`` stops trials by), counted per cell:
*not converged* when most of its judged seeds (more than half) are still improving,
*converged* when not, *unknown* when none can be judged."""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.plateau import still_improving
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
    columns = [*CELL, "seeds", "judged", "improving", "status"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    runs = with_positions(runs)
    # One flag a run (None: too short to judge), then counted per cell by grouped sums: a
    # study has thousands of cells, and a DataFrame slice a cell cost seconds.
    flags = [still_improving((histories or {}).get(r), higher) for r in runs["run_id"]]
    per_run = pd.DataFrame({"judged": [f is not None for f in flags],
                            "improving": [bool(f) for f in flags]}, index=runs.index)
    cells = runs.groupby(CELL, sort=False)
    counts = per_run.groupby([runs[c] for c in CELL], sort=False).sum()
    out = cells.size().rename("seeds").to_frame().join(counts).reset_index()
    out["judged"] = out["judged"].astype(int)
    out["improving"] = out["improving"].astype(int)
    out["status"] = np.where(out["judged"] == 0, "unknown",
                             np.where(out["improving"] > out["judged"] / 2, "not converged",
                                      "converged"))
    return out[columns]
