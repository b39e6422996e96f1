"""How many blocks a task's encoder keeps in its ``blocks`` list: what ``--positions`` counts.

The plan resolves a sweep's positions per task (``middle`` of 12 blocks is after the 6th, of
2 after the 1st; ``all`` is one place more than there are blocks) before anything starts, so
the encoder is built without its inserted module on the meta device: no memory, no weights,
no data (the ``images`` task counts its example's classes). A model that cannot be built
there is built on the CPU.
"""

from __future__ import annotations

import functools

from experiments.tasks.registry import task_for
from experiments.trial import EncoderChoice


@functools.cache
def encoder_depth(task: str, encoder: EncoderChoice | None = None) -> int | None:
    """The number of blocks in ``task``'s encoder (with ``encoder``'s settings), or None when
    it keeps no ``blocks`` list (a plugin's encoder of another shape: only ``end`` applies)."""
    import torch
    from torch import nn

    build = task_for(task, encoder or EncoderChoice()).build_model
    try:
        with torch.device("meta"):
            model = build(None)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        model = build(None)
    blocks = getattr(model, "blocks", None)
    return len(blocks) if isinstance(blocks, nn.Sequential | nn.ModuleList) else None
