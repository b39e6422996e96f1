"""When a run has stopped improving: one rule, read by the claims (``results.claims``: is a
cell converged? did it learn at all?) and by ``--epochs auto:MAX`` (Ray Tune's stopper,
``orchestrator.schedulers.PlateauStopper``, stops a trial when the rule says so).

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


# A run that never got its training loss 2% below the loss of predicting every class alike
# (ln C for C classes) had not started learning: the claims name it apart from "not
# converged", and ``--epochs auto`` does not stop it for a plateau of chance.
CHANCE_MARGIN = 0.02


def chance_loss(chance: float | None) -> float | None:
    """The cross-entropy of a uniform prediction, ln C, from a task's chance accuracy 1/C."""
    return -math.log(chance) if chance and 0 < chance < 1 else None


def stayed_at_chance(losses: list[float] | None, chance: float | None) -> bool | None:
    """True when no training loss in ``losses`` got more than ``CHANCE_MARGIN`` below
    ``chance`` (a chance *loss*, ``chance_loss``); None when either is unknown."""
    h = [float(v) for v in (losses or []) if v is not None and math.isfinite(float(v))]
    if not h or chance is None or not math.isfinite(chance) or chance <= 0:
        return None
    return min(h) > (1 - CHANCE_MARGIN) * chance


def should_stop(history: list[float] | None, higher: bool = True,
                losses: list[float] | None = None, chance: float | None = None) -> bool:
    """``--epochs auto``'s rule: the plateau rule says the run no longer improves, and it
    has started learning (a run at chance keeps the epochs it has left)."""
    return still_improving(history, higher) is False and not stayed_at_chance(losses, chance)
