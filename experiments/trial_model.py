"""A trial's model at initialisation, built once for training and once for ``--prescreen``:
the same seed, block, weights, encoder settings and place, so what the prescreen measures is
the model the trial then trains."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from encoders.lm.auxiliary import AuxiliaryBranch
from encoders.lm.block_factory import BlockInfo
from encoders.lm.controls import build_block
from encoders.lm.frozen_block import FrozenLMBlock
from encoders.lm.inserted import MLPBlock
from encoders.visual.placement import place_block
from experiments.encoder_choice import apply_encoder_choice
from experiments.trial import TrialSpec


def build_trial_model(trial: TrialSpec, task, weights_dir: str | Path | None = None,
                      dtype: torch.dtype | None = None
                      ) -> tuple[nn.Module, nn.Module | None, BlockInfo, dict[str, object]]:
    """The trial's model at initialisation, seeded, exactly as its training starts from it:
    (model, the inserted module, what the block was built from, the encoder's settings as
    recorded). ``--prescreen`` measures the same model the trial then trains."""
    hp = trial.hparams
    torch.manual_seed(trial.seed)
    block, info = build_block(
        family=trial.family,
        size=trial.size,
        layers=trial.layers,
        control=trial.control,
        seed=trial.seed,
        visual_dim=task.visual_dim,
        weights_dir=weights_dir,
        dtype=dtype,
        final_norm=hp.final_norm,
    )
    if isinstance(block, FrozenLMBlock | MLPBlock | AuxiliaryBranch):  # adapters, MLP linears
        block.init_adapters(hp.adapter_init)
    if isinstance(block, AuxiliaryBranch):  # the side branch's own classifier
        if not task.num_classes:
            raise ValueError(f"control 'auxiliary' needs a classification task; "
                             f"{task.name!r} has no classes")
        block.attach_head(task.num_classes, task.prefix_tokens)
    model = task.build_model(block)
    encoder = apply_encoder_choice(model, block, task, trial.encoder)  # weights, frozen
    place_block(model, trial.position, f"task {task.name!r}")  # after: weights key by index
    return model, block, info, encoder
