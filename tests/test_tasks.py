"""Every registered task with every control, parametrized over both registries: a new task or
a new control is tested the moment it is registered (timm's test_models, for our tasks).

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
from encoders.lm.controls import build_block, get_control, list_controls
from encoders.lm.frozen_block import FrozenLMBlock, lm_layer_parameters
from encoders.lm.inserted import MLPBlock, VisualBlockSlot
from experiments.batches import forward
from experiments.objectives.classification import CLASSIFICATION
from experiments.tasks.registry import get_task, list_tasks

BATCH = 2


def _output(out) -> torch.Tensor:
    """The first tensor of a model's output (logits, or trajectories, or image embeddings)."""
    return out[0] if isinstance(out, tuple) else out


def control_block(control: str, visual_dim: int):
    """The control's arm and its module for MiniLM's last layer (seeded), at ``visual_dim``."""
    arm = get_control(control)
    torch.manual_seed(0)
    block, info = build_block(family="minilm", size="l6",
                              layers=(5,) if arm.layers != "none" else (), control=control,
                              seed=0, visual_dim=visual_dim)
    return arm, block, info


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on two shared cores: a second intra-op thread mostly waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_task_declares_what_the_registry_test_needs():
    for name in list_tasks():
        task = get_task(name)
        assert task.example is not None, f"task {name!r} has no example batch"
        assert task.mode in ("max", "min"), name
        assert task.metric.startswith("val_"), name


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
    task = get_task(task_name)
    arm, block, info = control_block(control, task.visual_dim)
    assert info.weights_source == arm.weights_source
    model = task.build_model(block)
    x, y = task.example(BATCH)

    if block is None:
        assert not any(isinstance(m, FrozenLMBlock) for m in model.modules())
    else:
        assert model.blocks[-1] is block  # appended after the encoder's last block
        if isinstance(block, FrozenLMBlock):
            assert arm.adapters
            assert len(block.layers) == (1 if arm.layers != "none" else 0)
            perturbed = block.layers[0] if len(block.layers) else block.proj_out
        elif isinstance(block, VisualBlockSlot):  # one more of the encoder's own blocks
            assert type(block.block) is type(model.blocks[-2]) and not arm.adapters
            assert block.visual_params > 0 and block.lm_params > 0
            perturbed = block.block
        else:
            assert isinstance(block, MLPBlock) and not arm.adapters
            perturbed = block.proj_out
        # on the path: perturbing the block's own weights (the LM layer's, else the
        # adapters', the MLP's or the visual block's) changes what the model outputs
        model.eval()
        with torch.no_grad():
            before = _output(forward(model, x)).clone()
            saved = {k: v.clone() for k, v in perturbed.state_dict().items()}
            for p in perturbed.parameters():
                p.add_(torch.randn_like(p) * p.detach().float().std().clamp_min(0.02))
            after = _output(forward(model, x))
            perturbed.load_state_dict(saved)
        assert not torch.allclose(after, before, atol=1e-5)

    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    lm_frozen = isinstance(block, FrozenLMBlock) and not arm.trains_lm
    assert len(frozen) == (sum(1 for _ in block.layers.parameters()) if lm_frozen else 0)
    opt = torch.optim.AdamW(trainable.values(), lr=1e-3)
    loss = (task.objective or CLASSIFICATION).loss(forward(model, x), y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    # the gradient flows through the block to the encoder below it
    below = model.blocks[-2] if block is not None else model.blocks[-1]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in below.parameters())
    opt.step()
    moved = [n for n, p in trainable.items() if not torch.equal(p, start[n])]
    assert len(moved) > len(trainable) // 2, f"only {len(moved)} of {len(trainable)} moved"
    if isinstance(block, FrozenLMBlock | MLPBlock):  # the two adapters (linears) are trained
        assert sum(n.endswith(("proj_in.weight", "proj_out.weight")) for n in moved) == 2
    if arm.trains_lm:  # and so are the LM layer's weights
        layer = {n for n, _ in lm_layer_parameters(model)}
        assert layer and len(layer & set(moved)) > len(layer) // 2
    if isinstance(block, VisualBlockSlot):
        assert all(p.requires_grad for p in block.parameters())
        assert any(n.startswith(f"blocks.{len(model.blocks) - 1}.block.") for n in moved)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


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
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    trainable = [p for p in block.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    frozen = [p for p in block.parameters() if not p.requires_grad]
    lm_frozen = isinstance(block, FrozenLMBlock) and len(block.layers) and not arm.trains_lm
    assert bool(frozen) is bool(lm_frozen)
