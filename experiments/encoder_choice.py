"""A trial's encoder choice (``experiments.trial.EncoderChoice``) acted on: the task built for
it, the encoder's weights loaded from a file, its own weights frozen. The same code checks a
sweep before Ray starts, on the meta device (no weights allocated, only the file's header
read), so that a name, size or file that cannot work is one line, not a failed trial.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from encoders.visual.timm_encoder import EncoderChoiceError
from encoders.visual.timm_weights import check_file, freeze_encoder, load_weights
from encoders.visual.vit import check_block_template
from experiments.tasks.registry import Task, task_for
from experiments.trial import EncoderChoice


def apply_encoder_choice(model: nn.Module, block: nn.Module | None, task: Task,
                         choice: EncoderChoice) -> dict[str, object]:
    """``model`` (``task``'s, ``block`` inserted) with the choice's weights and training;
    returns what the run records: the file's sha256 (``encoder_checkpoint``), what became of
    the head (``encoder_head``) and how many encoder parameters were frozen."""
    info: dict[str, object] = {"encoder_checkpoint": "", "encoder_head": "",
                               "encoder_frozen_params": 0}
    if (choice.weights or choice.train == "frozen") and not task.timm_encoder:
        raise EncoderChoiceError(f"task {task.name!r}: its encoder is not a timm model; "
                                 "--encoder-weights and --encoder-train frozen do not apply")
    if choice.weights:
        info.update(load_weights(model, block, choice.weights, choice.checkpoint))
    if choice.train == "frozen":
        info["encoder_frozen_params"] = freeze_encoder(model, block)
    return info


def check_encoder_choice(task_name: str, choice: EncoderChoice,
                         data_dir: str | Path | None, controls: tuple[str, ...] = ()) -> str:
    """Raise EncoderChoiceError (one line) unless ``task_name`` can run with ``choice`` and
    ``controls``: the task built for it (``--encoder`` and ``--image-size`` described by
    timm) and its model built on the meta device, the weights file's header fitted to it, a
    ``visual-block`` control able to copy its last block. Returns what becomes of the head
    ("" without a file)."""
    task = task_for(task_name, choice, data_dir)
    if not choice.weights and "visual-block" not in controls:
        return ""
    with torch.device("meta"):
        model = task.build_model(None)
    if "visual-block" in controls and choice.name:
        try:
            check_block_template(model.blocks[-1], f"--encoder {choice.name}")
        except TypeError as e:
            raise EncoderChoiceError(str(e)) from None
    return check_file(choice.weights, model) if choice.weights else ""
