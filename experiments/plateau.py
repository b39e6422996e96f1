"""When a run has stopped improving: one rule, read by the claims (``results.claims``: is a
cell converged?) and by ``--epochs auto:MAX`` (a trial stops when the rule says so).

A run is *still improving* when the best of its task metric over the last k epochs,
k = max(2, ceil(25% of its epochs)), beats its best before them by more than 0.5% of that
earlier best (relative tolerance; in the metric's direction). A run with k or fewer epochs
cannot be judged (None).
"""

from __future__ import annotations

import math

TOLERANCE = 0.005  # relative: an improvement smaller than 0.5% of the earlier best is noise
WINDOW_SHARE = 0.25  # the last quarter of the epochs (at least 2)


def window(epochs: int) -> int:
    """k: the epochs at the end that must beat the ones before them."""
    return max(2, math.ceil(WINDOW_SHARE * epochs))


def still_improving(history: list[float] | None, higher: bool = True) -> bool | None:
    """True when the last k epochs beat the earlier best by more than the tolerance; None
    when the history is too short to tell (k or fewer epochs)."""
    h = [float(v) for v in (history or []) if math.isfinite(float(v))]
    k = window(len(h))
    if len(h) <= k:
        return None
    before, last = h[:-k], h[-k:]
    best_before = max(before) if higher else min(before)
    gain = (max(last) - best_before) if higher else (best_before - min(last))
    return gain > TOLERANCE * abs(best_before)
