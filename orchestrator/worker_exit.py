"""A Ray worker that exits when told prints nothing about it."""

from __future__ import annotations

import sys


def exit_quietly_on_sigterm() -> None:
    """Ray's worker turns SIGTERM (its actor stopped by Tune, or Ray shutting down) into
    ``SystemExit``. When the signal lands inside a weakref callback or a ``__del__``, Python
    cannot raise it there and prints "Exception ignored in ..." with a traceback, which Ray
    forwards to the sweep's console: noise from a process that is exiting as it was asked to
    (seen in CI as a smoke sweep's stray stderr). Only that case is dropped; every other
    unraisable error is printed as before, by the hook that was in place."""
    previous = sys.unraisablehook
    if getattr(previous, "_lmblocks_quiet_exit", False):
        return  # the actor is reused for another trial: installed once

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        previous(unraisable)

    hook._lmblocks_quiet_exit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
