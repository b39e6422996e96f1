"""Bai et al.'s predictor measured before any training: the linear CKA between the inserted
block's input and output at initialisation (``experiments.block_measures.block_similarity``)
for a planned cell, on the model its trial starts from (``build_trial_model``: the same
seed, weights and place, so the number is the trial's own ``block_cka_init`` on the same
device and dtype) and the same probe batch (``spread_batch``). One probe-batch forward per
cell, no backward; each layer is read from its source once (the layer cache serves the
cells that share it: other positions, other tasks)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from experiments.block_measures import block_similarity
from experiments.probe import spread_batch
from experiments.tasks.registry import task_for
from experiments.trial import TrialSpec
from experiments.trial_model import build_trial_model


@functools.cache
def _probe_inputs(task_name: str, encoder, data_dir: str | None):
    task = task_for(task_name, encoder, data_dir)
    _, val = task.build_data(data_dir)
    inputs, _ = spread_batch(val, task.probe_size)
    valid = None
    if task.valid_tokens is not None:
        valid = task.valid_tokens(inputs if not isinstance(inputs, list) else tuple(inputs))
    return task, inputs, valid


def initial_similarity(trial: TrialSpec, weights_dir: str | Path | None = None,
                       data_dir: str | Path | None = None) -> float | None:
    """The trial's ``block_cka_init`` computed without training it (float32, CPU); None
    where no module is inserted."""
    task, inputs, valid = _probe_inputs(trial.task, trial.encoder,
                                        str(data_dir) if data_dir is not None else None)
    with torch.no_grad():
        model, _, _, _ = build_trial_model(trial, task, weights_dir)
        return block_similarity(model, inputs, valid, task.prefix_tokens)
