"""A trial's key survives new hyperparameters: a cell an older sweep finished (recorded before
the recipe's fields and the three-way final norm existed) keeps its key, so it is not run
again; any non-neutral value of a new field makes a new cell."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from experiments.trial import (
    ENCODER_CONFIG,
    NEUTRAL_HPARAMS,
    RUNTIME_HPARAMS,
    EncoderChoice,
    Hyperparameters,
    TrialSpec,
)

# The hyperparameters a trial had before issue 15 (final_norm a bool then).
OLD_FIELDS = ("epochs", "lr", "weight_decay", "batch_size", "compute_dtype", "final_norm",
              "adapter_init", "schedule", "warmup_epochs", "label_smoothing", "mixup", "cutmix")


def old_key(trial: TrialSpec, final_norm: bool) -> str:
    """The key exactly as it was computed before: the flat config minus runtime settings."""
    cfg = {k: v for k, v in trial.to_config().items()
           if k not in RUNTIME_HPARAMS and k not in NEUTRAL_HPARAMS and k not in ENCODER_CONFIG
           and k != "position"}
    cfg["final_norm"] = final_norm
    assert set(cfg) == {"family", "size", "layers", "task", "control", "seed", *OLD_FIELDS}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def test_a_cell_at_the_end_keeps_its_key_and_another_position_is_a_new_cell():
    """Every cell recorded before ``--positions`` ran at the end: the key leaves ``end`` out,
    so such a cell is found finished; each other place is a cell of its own, and the
    position travels through the Ray/MLflow config."""
    end = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 0)
    assert end.position == "end" and end.key == old_key(end, False)
    keys = {dataclasses.replace(end, position=p).key for p in ("end", "middle", "start", "0")}
    assert len(keys) == 4
    middle = dataclasses.replace(end, position="middle")
    assert TrialSpec.from_config(middle.to_config()) == middle
    assert TrialSpec.from_config({k: v for k, v in end.to_config().items()
                                  if k != "position"}) == end  # a run logged before the axis
    assert middle.run_name == "minilm-l6-L5-at-middle-pretrained-digits-s0"


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


def test_an_imagenet_vit_cell_keeps_its_key_now_that_it_is_a_preset_of_images():
    """imagenet-vit-tiny runs the ``images`` task's code with the task's own encoder: the
    encoder fields sit at their defaults and its cell key is the one it had."""
    trial = TrialSpec("opt", "125m", (11,), "imagenet-vit-tiny", "pretrained", 0,
                      Hyperparameters(epochs=300, lr=5e-4, label_smoothing=0.1))
    assert trial.key == old_key(trial, False)


@pytest.mark.parametrize("change", [{"name": "deit_small_patch16_224"}, {"train": "frozen"},
                                    {"image_size": 64}, {"checkpoint": "ab" * 32}])
def test_each_encoder_choice_is_a_new_cell_but_where_the_file_lies_is_not(change):
    base = TrialSpec("minilm", "l6", (5,), "images", "pretrained", 0,
                     encoder=EncoderChoice(name="vit_tiny_patch16_224"))
    changed = dataclasses.replace(base, encoder=dataclasses.replace(base.encoder, **change))
    assert changed.key != base.key
    moved = dataclasses.replace(changed, encoder=dataclasses.replace(
        changed.encoder, weights="/elsewhere/vit.safetensors"))
    assert moved.key == changed.key
    assert TrialSpec.from_config(changed.to_config()) == changed
    # MLflow gives every param back as text, "none" where it did not apply
    text = {k: ("none" if v == "" else str(v)) for k, v in changed.to_config().items()}
    assert TrialSpec.from_config(text).encoder == changed.encoder
