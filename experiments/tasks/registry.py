"""The task registry: one small module per task (its model builder and its registration),
found through the catalog (``catalog.py``: plain data, imported modules on first use).

A task puts together a dataset (``experiments/datasets/``), a visual encoder around the block
(``encoders/visual/``) and an objective (``experiments/objectives/``). ``tests/test_tasks.py``
runs every registered task with every control, so a new task is tested the moment it is
registered: that is what ``example`` is for.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from encoders.lm.registry import DuplicateNameError
from experiments.tasks.catalog import BUILTIN_TASKS, CATALOG, TaskEntry

if TYPE_CHECKING:  # the plan reads the catalog; a task's module imports these when a trial runs
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from experiments.batches import Batch
    from experiments.objectives import Objective
    from experiments.trial import EncoderChoice


def _data_ok(data_dir: str | Path | None) -> None:  # embedded data: nothing to check
    return None


@dataclass(frozen=True)
class Task:
    """What a trial needs from a task: its data, its model around a block, its metric.

    ``build_model(block)`` receives the inserted module (or ``None`` for the ``none``
    control) and returns the full trainable model; ``visual_dim`` is the token width at the
    insertion point, which sizes the block's adapters.
    """

    name: str
    description: str
    visual_dim: int
    build_data: Callable[..., tuple[Dataset, Dataset]]  # (data_dir=None) -> (train, val)
    build_model: Callable[[nn.Module | None], nn.Module]
    metric: str = "val_acc"
    mode: str = "max"
    # Which tokens after the prefix carry the object, (inputs) -> (B, n_tokens) bool (digits:
    # patches with ink): lets the information-filtering probe score concentration (None:
    # maps only, no scores). ``inputs`` is the batch's input tensor or tuple of tensors.
    informative_tokens: Callable[..., torch.Tensor] | None = None
    prefix_tokens: int = 1  # class/register tokens ahead of the patches
    probe_size: int = 8  # validation samples in the fixed probe batch
    # Validates ``--data-dir`` before anything starts (raises DataError); embedded: no-op.
    check_data: Callable[[str | Path | None], None] = _data_ok
    chance: float = 0.0  # the metric of a constant guess, for "clearly above chance" checks
    num_classes: int = 0  # for Mixup's soft targets
    # Loss and validation metrics; None: classification (experiments.objectives).
    objective: Objective | None = None
    # Which tokens are real, (inputs) -> (B, n_tokens) bool, for padded sequences: the probe
    # leaves padding out of its maps (None: every token is real).
    valid_tokens: Callable[..., torch.Tensor] | None = None
    # n -> a batch (inputs, target) of n samples that needs no data on disk: the embedded
    # validation set's first samples, or random inputs of a real dataset's shapes. The
    # registry test runs every task with every control on it.
    example: Callable[[int], tuple[Batch, Batch]] | None = None
    # Its encoder is a timm model (``build_model`` returns it, the block in its ``blocks``):
    # ``--encoder-weights`` and ``--encoder-train`` apply (encoders/visual/timm_weights.py).
    timm_encoder: bool = False
    # A task whose encoder the sweep chooses (``--encoder``, ``--image-size``): (the trial's
    # EncoderChoice, data_dir) -> the task built for it, its width and classes known then.
    configure: Callable[[EncoderChoice, str | Path | None], Task] | None = None

    @property
    def embedded(self) -> bool:
        """Its data ships with lmblocks (no ``--data-dir`` to check)."""
        return self.check_data is _data_ok


_TASKS: dict[str, Task] = {}


def _entry_of(task: Task, module: str) -> TaskEntry:
    return TaskEntry(task.name, module, task.metric, task.mode,
                     classification=task.objective is None, embedded=task.embedded,
                     timm_encoder=task.timm_encoder,
                     chooses_encoder=task.configure is not None)


def register_task(task: Task) -> Task:
    """Register ``task``; a catalogued task must agree with its catalog row (the plan checks a
    sweep against the row before the task's module is imported)."""
    if task.name in _TASKS:
        raise DuplicateNameError("task", task.name)
    row = CATALOG.get(task.name)
    if row is not None and row.module not in sys.modules:  # its row's module registers it
        owner = "lmblocks'" if row.name in BUILTIN_TASKS else f"module {row.module}'s"
        raise DuplicateNameError("task", task.name, f"task {task.name!r} is {owner} (its "
                                 f"catalog row names module {row.module}, not yet imported)")
    if row is not None and (have := _entry_of(task, row.module)) != row:
        raise ValueError(f"task {task.name!r} disagrees with its catalog row: {have} "
                             f"(catalog: {row})")
    if row is not None and row.cost is not None and row.cost.width != task.visual_dim:
        raise ValueError(f"task {task.name!r}: visual_dim {task.visual_dim}, but its catalog "
                         f"cost row has width {row.cost.width}")
    _TASKS[task.name] = task
    return task


def list_tasks() -> list[str]:
    return sorted(set(CATALOG) | set(_TASKS))


def task_entry(name: str) -> TaskEntry:
    """What the plan needs of a task, without building it: its catalog row, or (for a task
    registered outside the catalog, e.g. a user's own module) the registered task's."""
    if name in CATALOG:
        return CATALOG[name]
    task = get_task(name)
    return _entry_of(task, task.build_model.__module__)


def get_task(name: str) -> Task:
    """The task, its module imported on first use."""
    if name not in _TASKS and name in CATALOG:
        importlib.import_module(CATALOG[name].module)
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; valid: {', '.join(list_tasks())}")
    return _TASKS[name]


def task_for(name: str, encoder: EncoderChoice, data_dir: str | Path | None = None) -> Task:
    """The task a trial runs: ``name``'s, built for ``encoder`` where the sweep chooses it."""
    task = get_task(name)
    return task.configure(encoder, data_dir) if task.configure is not None else task


def validation_examples(build_data: Callable[..., tuple[Dataset, Dataset]], step: int = 1
                        ) -> Callable[[int], tuple[Batch, Batch]]:
    """``Task.example`` of an embedded task: its validation set's first ``n`` samples, every
    ``step``-th (so that a batch of captions holds ``n`` different images, say)."""
    def example(n: int) -> tuple[Batch, Batch]:
        from torch.utils.data import default_collate

        _, val = build_data()
        return default_collate([val[i * step] for i in range(n)])

    return example
