"""Every registered task with every control, parametrized over both registries: a new task or
a new control is tested the moment it is registered (timm's test_models, for our tasks). The
checks are ``experiments/registry_checks.py``'s, which a plugin's own tests run on what it
registers (``tests/test_plugins.py`` runs them on the installed plugins).

On the task's ``example`` batch (its embedded validation data, or random inputs of a real
dataset's shapes): the block is appended after the encoder's last block and is on the path
(changing its weights changes the output), a training step runs forward and backward to a
finite loss, the gradient reaches the encoder below the block, the trainable weights move
and the frozen ones do not.
"""

from __future__ import annotations

import pytest
import torch

import experiments.tasks  # noqa: F401  (registers the tasks)
from encoders.lm.auxiliary import AuxiliaryBranch
from encoders.lm.controls import list_controls
from encoders.lm.frozen_block import FrozenLMBlock
from experiments.registry_checks import (
    check_task_declares_what_checks_need,
    check_task_with_control,
    control_block,
)
from experiments.tasks.registry import get_task, list_tasks


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on two shared cores: a second intra-op thread mostly waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_task_declares_what_the_registry_test_needs():
    for name in list_tasks():
        check_task_declares_what_checks_need(name)


# Tasks on real data run their paper-scale models (ViT-S at 224, 16-frame video) on random
# inputs: seconds each on CPU, so they are in the slow tier (CI runs it), and with the
# controls whose module depends on the task: the LM block (pretrained), no block, and one
# more block of the task's own encoder (visual-block). The other controls' modules are the
# same classes at the task's width: they run in the whole model on every embedded task and,
# at each paper-scale task's width, in test_block_of_every_control_at_every_task_width.
PAPER_SCALE_CONTROLS = ("pretrained", "none", "visual-block")
TASK_CONTROLS = [
    (name, control) if get_task(name).embedded
    else pytest.param(name, control, marks=pytest.mark.slow)
    for name in list_tasks() for control in list_controls()
    if get_task(name).embedded or control in PAPER_SCALE_CONTROLS
]


@pytest.mark.parametrize(("task_name", "control"), TASK_CONTROLS)
def test_task_with_control_trains_with_the_block_on_the_path(task_name, control):
    check_task_with_control(task_name, control)  # experiments/registry_checks.py


@pytest.mark.parametrize("control", [c for c in list_controls()
                                     if c not in ("none", "visual-block")])
@pytest.mark.parametrize("task_name", [n for n in list_tasks() if not get_task(n).embedded])
def test_block_of_every_control_at_every_task_width(task_name, control):
    """The inserted module at a paper-scale task's width: (B, T, D) in, (B, T, D) out, the
    gradient reaches its input and its trainable weights, and only a frozen LM layer has
    frozen weights."""
    task = get_task(task_name)
    arm, block, _ = control_block(control, task.visual_dim)
    x = torch.randn(2, 5, task.visual_dim, requires_grad=True)
    lm = block
    if isinstance(block, AuxiliaryBranch):  # training only: its loss is its own head's
        block.attach_head(3, task.prefix_tokens)
        lm = block.side
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    loss = out.square().mean()
    if isinstance(block, AuxiliaryBranch):
        loss = loss + block.take_logits().square().mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    trainable = [p for p in block.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    frozen = [p for p in block.parameters() if not p.requires_grad]
    lm_frozen = isinstance(lm, FrozenLMBlock) and len(lm.layers) and not arm.trains_lm
    assert bool(frozen) is bool(lm_frozen)
