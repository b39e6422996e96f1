"""The ``auxiliary`` control (Bai et al.'s auxiliary training): the frozen block as a side
branch with its own head, in the loss while training, absent from the evaluated model; its
measures read the branch; only its cells carry ``--aux-weight``; its evaluation costs no
block."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import encoders.lm.families  # noqa: F401
from encoders.lm.auxiliary import AuxiliaryBranch, with_auxiliary_loss
from encoders.lm.controls import build_block, get_control
from encoders.visual.placement import place_block
from experiments.block_measures import block_similarity
from experiments.cost_model import trial_cost
from experiments.tasks.registry import get_task
from experiments.trial import Hyperparameters, TrialSpec
from orchestrator.plan import build_plan
from orchestrator.spec import SpecError, SweepSpec
from tests.test_block_measures import hsic_cka


def branch_model(position: str = "middle"):
    task = get_task("digits")
    torch.manual_seed(0)
    branch, info = build_block(family="minilm", size="l6", layers=(5,), control="auxiliary",
                               seed=0, visual_dim=task.visual_dim)
    branch.attach_head(task.num_classes, task.prefix_tokens)
    model = task.build_model(branch)
    place_block(model, position)
    return task, model, branch, info


def test_the_branch_is_absent_from_the_evaluated_model():
    task, model, branch, info = branch_model()
    assert isinstance(branch, AuxiliaryBranch) and info.weights_source == "pretrained"
    assert get_control("auxiliary").training_only
    calls = []
    branch.side.register_forward_hook(lambda m, a, o: calls.append(1))
    x, _ = task.example(4)
    model.eval()
    with torch.no_grad():
        with_branch = model(x)
        del model.blocks[1]  # the encoder alone, the same weights
        without = model(x)
    assert torch.equal(with_branch, without) and calls == []


def test_training_adds_the_weighted_branch_loss_and_its_gradient_reaches_the_encoder():
    task, model, branch, _ = branch_model("middle")
    x, y = task.example(8)
    model.train()
    seen = {}
    branch.side.register_forward_hook(lambda m, a, o: seen.__setitem__("side", o))
    loss_fn = with_auxiliary_loss(F.cross_entropy, branch, 0.25)
    out = model(x)
    aux_logits = branch.head(branch.norm(seen["side"][:, 0]))
    want = F.cross_entropy(out, y) + 0.25 * F.cross_entropy(aux_logits, y)
    loss = loss_fn(out, y)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert branch.take_logits() is None  # taken once
    loss.backward()
    assert branch.head.weight.grad is not None and branch.side.proj_in.weight.grad is not None
    assert all(p.grad is None for p in branch.side.layers.parameters())  # frozen
    # the main path alone gives the encoder block after the branch no aux gradient; the one
    # before it gets both
    model.zero_grad(set_to_none=True)
    model(x)
    only_aux = branch.take_logits()
    F.cross_entropy(only_aux, y).backward()
    assert model.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0  # below the branch
    assert model.blocks[2].mlp.fc1.weight.grad is None  # after it: not on the side path


def test_its_measures_read_the_branch_s_block():
    task, model, branch, _ = branch_model("end")
    x, _ = task.example(4)
    seen = {}
    branch.side.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    branch.side.register_forward_hook(lambda m, a, o: seen.__setitem__("y", o))
    got = block_similarity(model, x)
    assert got == pytest.approx(hsic_cka(seen["x"].flatten(0, 1), seen["y"].flatten(0, 1)),
                                rel=1e-6)
    assert got < 0.999  # not the identity of the main path
    assert not branch.observed  # measuring left it as it was


def test_only_its_cells_carry_the_weight_and_bad_input_is_one_line():
    spec = SweepSpec(controls=("auxiliary", "pretrained", "none"), seeds=(0,)).replace(
        aux_weight=0.3)
    plan = build_plan(spec)
    weights = {t.control: t.hparams.aux_weight for t in plan}
    assert weights == {"auxiliary": 0.3, "pretrained": 1.0, "none": 1.0}
    default = build_plan(SweepSpec(controls=("pretrained", "none"), seeds=(0,)))
    assert {t.key for t in default} == {t.key for t in plan if t.control != "auxiliary"}
    aux = next(t for t in plan if t.control == "auxiliary")
    assert aux.key != dataclasses.replace(aux, hparams=Hyperparameters()).key
    with pytest.raises(SpecError, match=r"^control 'auxiliary' applies to classification "
                                        r"tasks only, not to road-graphs"):
        build_plan(SweepSpec(tasks=("road-graphs",), controls=("auxiliary",)))
    with pytest.raises(SpecError, match=r"^bad aux_weight 0.0; valid: a finite number > 0"):
        build_plan(spec.replace(aux_weight=0.0))


def test_its_evaluation_costs_no_block():
    aux = trial_cost(TrialSpec("minilm", "l6", (5,), "digits-convstem", "auxiliary", 0))
    pre = trial_cost(TrialSpec("minilm", "l6", (5,), "digits-convstem", "pretrained", 0))
    none = trial_cost(TrialSpec("", "", (), "digits-convstem", "none", 0))
    assert aux.step == pre.step  # training runs the block
    assert aux.flops == pytest.approx(aux.train_samples * pre.step.train_step
                                      + aux.val_samples * none.step.forward)
    assert none.flops < aux.flops < pre.flops
