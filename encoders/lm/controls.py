"""The paper's controls: one table that the plan, the block factory, tracking and the report
all read, so a new control is one entry here plus its builder in ``block_factory.py``.

Each entry says what the arm inserts (LM layers and/or the two adapters), where its weights
come from (recorded on every run as ``weights.source``), which of a model size's layer
selections it runs, whether it belongs to an LM at all, whether a report may measure the
other cells against it (paired on task and seed, and on the LM too where it has one), how
figures draw it and, by its place in the table, where it sits in the report's tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from encoders.lm.block_options import FINAL_NORMS
from encoders.lm.registry import DuplicateNameError, resolve

if TYPE_CHECKING:
    import torch
    from torch import nn

    from encoders.lm.block_factory import BlockInfo, BlockRequest

Builder = Callable[["BlockRequest"], tuple["nn.Module | None", "BlockInfo"]]
_F = "encoders.lm.block_factory:"  # where the shipped builders live
LAYER_CHOICES = ("each", "last", "none")


@dataclass(frozen=True)
class Control:
    name: str
    label: str  # how figures and reports name it
    weights_source: str  # pretrained | random | none
    layers: str  # "each": one trial per layer selection; "last": the last one only; "none"
    adapters: bool  # the two trainable linear maps are inserted
    per_lm: bool  # a cell per family and size (False: no LM at all)
    reference: bool  # a report can pair the other cells with it and measure the difference
    style: tuple[str, str]  # (matplotlib colour, line style) in figures
    # Its builder: a reference ("package.module:name"), imported when a block is built so
    # that the plan reads this table without torch; or the function itself.
    build: str | Builder
    trains_lm: bool = False  # the LM layers train (float32 master weights, autocast computes)
    training_only: bool = False  # the module runs in training, not in evaluation (auxiliary)

    @property
    def pair_on(self) -> tuple[str, ...]:
        """The columns a cell matches this control on, as a reference: the same task and
        seed, and the same LM and position where the control is sized and placed like one
        (``none`` inserts nothing: every position pairs with it)."""
        return ("family", "size", "position", "task", "seed") if self.per_lm else ("task", "seed")


_CONTROLS: dict[str, Control] = {}


def register_control(control: Control) -> Control:
    if control.name in _CONTROLS:
        raise DuplicateNameError("control", control.name)
    if control.layers not in LAYER_CHOICES:
        raise ValueError(f"control {control.name!r}: layers {control.layers!r}; "
                         f"valid: {', '.join(LAYER_CHOICES)}")
    _CONTROLS[control.name] = control
    return control


def list_controls() -> list[str]:
    """In the table's order: the order of the report's columns and legends."""
    return list(_CONTROLS)


def get_control(name: str) -> Control:
    if name not in _CONTROLS:
        raise KeyError(f"unknown control {name!r}; valid: {', '.join(list_controls())}")
    return _CONTROLS[name]


def reference_controls() -> list[str]:
    """The controls a report may measure the other cells against (``--control``)."""
    return [c.name for c in _CONTROLS.values() if c.reference]


def build_block(
    *,
    family: str,
    size: str,
    layers: tuple[int, ...],
    control: str,
    seed: int,
    visual_dim: int,
    weights_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
    final_norm: str = "none",
) -> tuple[nn.Module | None, BlockInfo]:
    """The inserted module of ``control`` and what the run records about its weights.
    ``dtype``: the block's weights (None: float32). ``final_norm``: none, unit-rms or lm
    (``FINAL_NORMS``); a control that trains its LM layers keeps them in float32 whatever
    ``dtype`` (an optimizer's master weights)."""
    import torch

    from encoders.lm.block_factory import BlockRequest

    arm = get_control(control)
    if final_norm not in FINAL_NORMS:
        raise ValueError(f"unknown final norm {final_norm!r}; valid: {', '.join(FINAL_NORMS)}")
    dtype = torch.float32 if arm.trains_lm or dtype is None else dtype
    build = resolve(arm.build) if isinstance(arm.build, str) else arm.build
    block, info = build(BlockRequest(family, size, tuple(layers), seed, visual_dim,
                                         weights_dir, dtype, final_norm, arm.trains_lm))
    return block, dataclasses.replace(info, weights_source=arm.weights_source)


for _control in (
    Control("pretrained", "pretrained frozen block", "pretrained", layers="each", adapters=True,
            per_lm=True, reference=False, style=("tab:blue", "-"), build=_F + "pretrained_block"),
    Control("random", "random frozen block", "random", layers="last", adapters=True,
            per_lm=True, reference=True, style=("tab:red", ":"), build=_F + "random_block"),
    Control("adapters", "adapters only", "none", layers="none", adapters=True, per_lm=True,
            reference=True, style=("tab:green", "-."), build=_F + "adapters_only"),
    Control("none", "no block", "none", layers="none", adapters=False, per_lm=False,
            reference=True, style=("grey", "--"), build=_F + "no_block"),
    # The capacity controls (the paper's Tables 6, A and B, and one of lmblocks'): the MLP at
    # the LM's width; the LM's shape randomly initialised and TRAINED (the paper's "+Random
    # LLM"; ``random`` above is frozen); the pretrained layer unfrozen (its lr scaled by
    # ``lm_lr_scale``); one more encoder block with as many parameters as the LM layer.
    Control("mlp", "MLP at the LM's width", "none", layers="none", adapters=False,
            per_lm=True, reference=True, style=("tab:orange", "-."), build=_F + "mlp_block"),
    Control("random-trained", "random block, trained", "random", layers="last", adapters=True,
            per_lm=True, reference=True, style=("tab:brown", ":"), build=_F + "random_block",
            trains_lm=True),
    Control("finetuned", "pretrained block, fine-tuned", "pretrained", layers="last",
            adapters=True, per_lm=True, reference=True, style=("tab:cyan", "-"),
            build=_F + "pretrained_block", trains_lm=True),
    Control("visual-block", "one more visual block", "none", layers="last", adapters=False,
            per_lm=True, reference=True, style=("tab:olive", "--"), build=_F + "visual_block"),
    # Bai et al.'s auxiliary training: the pretrained block as a side branch with its own
    # head and loss (``--aux-weight``), in training only; evaluated without it.
    Control("auxiliary", "pretrained block, auxiliary branch (training only)", "pretrained",
            layers="last", adapters=True, per_lm=True, reference=True,
            style=("tab:pink", "-."), build=_F + "auxiliary_block", training_only=True),
):
    register_control(_control)
