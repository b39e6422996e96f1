"""The plugin's own tests: lmblocks' registry checks on what it registers (the ones lmblocks
runs on its built-in tasks), its cost row, that importing it stays light, and that its task
learns. ``python -m pytest examples/plugin_task -p no:cacheprovider -n 0`` (about 10 s)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments.registry_checks import (
    check_cost_row,
    check_task_declares_what_checks_need,
    check_task_with_control,
    list_controls,
    plugin_registrations,
)

REGISTERED = plugin_registrations("plugin_task")  # imports it, recording what it registers


def test_it_registers_its_task_and_nothing_else():
    assert REGISTERED.tasks == ("plugin-shapes",)
    assert REGISTERED.families == () and REGISTERED.controls == ()


def test_importing_it_imports_no_torch():
    """lmblocks imports every installed plugin to plan a sweep: it must stay plain data."""
    code = "import sys, plugin_task; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("task", REGISTERED.tasks)
def test_task_declares_what_the_checks_need_and_its_cost_row_is_its_model_s(task):
    check_task_declares_what_checks_need(task)
    check_cost_row(task)


@pytest.mark.parametrize("control", list_controls())
@pytest.mark.parametrize("task", REGISTERED.tasks)
def test_task_with_every_control(task, control):
    check_task_with_control(task, control)


def test_it_learns_well_above_chance_in_three_epochs():
    from experiments.training import run_trial
    from experiments.trial import Hyperparameters, TrialSpec

    scores: list[float] = []
    trial = TrialSpec("", "", (), "plugin-shapes", "none", 0,
                      Hyperparameters(epochs=3, batch_size=16))
    run_trial(trial, lambda metrics, state: scores.append(metrics["val_acc"]))
    assert scores[-1] > 0.6, scores  # chance: 1/3
