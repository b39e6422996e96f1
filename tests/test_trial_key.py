"""A trial's key survives new hyperparameters: a cell an older sweep finished (recorded before
the recipe's fields and the three-way final norm existed) keeps its key, so it is not run
again; any non-neutral value of a new field makes a new cell."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from experiments.trial import NEUTRAL_HPARAMS, RUNTIME_HPARAMS, Hyperparameters, TrialSpec

# The hyperparameters a trial had before issue 15 (final_norm a bool then).
OLD_FIELDS = ("epochs", "lr", "weight_decay", "batch_size", "compute_dtype", "final_norm",
              "adapter_init", "schedule", "warmup_epochs", "label_smoothing", "mixup", "cutmix")


def old_key(trial: TrialSpec, final_norm: bool) -> str:
    """The key exactly as it was computed before: the flat config minus runtime settings."""
    cfg = {k: v for k, v in trial.to_config().items()
           if k not in RUNTIME_HPARAMS and (k not in NEUTRAL_HPARAMS)}
    cfg["final_norm"] = final_norm
    assert set(cfg) == {"family", "size", "layers", "task", "control", "seed", *OLD_FIELDS}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("final_norm, old", [("none", False), ("lm", True)])
def test_a_cell_recorded_before_the_new_fields_keeps_its_key(final_norm, old):
    trial = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 0,
                      Hyperparameters(lr=0.002, final_norm=final_norm))
    assert trial.key == old_key(trial, old)


@pytest.mark.parametrize("name", sorted(NEUTRAL_HPARAMS))
def test_a_new_field_away_from_neutral_is_a_new_cell(name):
    base = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 0)
    neutral = NEUTRAL_HPARAMS[name]
    other = (not neutral) if isinstance(neutral, bool) else neutral + 2
    changed = dataclasses.replace(base, hparams=dataclasses.replace(base.hparams,
                                                                    **{name: other}))
    assert changed.key != base.key
    assert getattr(Hyperparameters(), name) == neutral  # the default is the neutral value


def test_unit_rms_is_a_new_cell():
    base = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 0)
    keys = {dataclasses.replace(base, hparams=Hyperparameters(final_norm=f)).key
            for f in ("none", "unit-rms", "lm")}
    assert len(keys) == 3
