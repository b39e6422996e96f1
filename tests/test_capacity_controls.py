"""The capacity controls (mlp, random-trained, finetuned, visual-block) and the final norm:
parameter counts, what trains and what stays frozen, the visual block sized to the LM
layer on every task's encoder, the official code's unit RMSNorm, what a run records."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

import experiments.tasks  # noqa: F401  (registers the tasks)
from encoders.lm.controls import build_block, get_control, list_controls
from encoders.lm.frozen_block import (
    LM_LAYERS_PREFIX,
    FrozenLMBlock,
    UnitRMSNorm,
    lm_layer_parameters,
)
from encoders.lm.inserted import MLPBlock, VisualBlockSlot, mlp_params
from encoders.lm.registry import get_family
from encoders.visual.vit import insert_after_last_block, one_more_block
from experiments.tasks.registry import get_task, list_tasks
from experiments.training import cost_params

MINILM = get_family("minilm")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(control: str, visual_dim: int = 64, final_norm: str = "none"):
    arm = get_control(control)
    return build_block(family="minilm", size="l6", layers=(5,) if arm.layers != "none" else (),
                       control=control, seed=0, visual_dim=visual_dim, final_norm=final_norm)


def test_mlp_is_linear_gelu_layernorm_linear_at_the_lm_width():
    block, info = _build("mlp", visual_dim=64)
    hidden = MINILM.size("l6").hidden_size  # 384
    assert isinstance(block, MLPBlock) and info.weights_source == "none"
    assert [type(m) for m in block.children()] == [nn.Linear, nn.GELU, nn.LayerNorm, nn.Linear]
    # by hand: 64 x 384 in, 384 x 64 out (bias-free, as the adapters), LayerNorm 2 x 384
    assert sum(p.numel() for p in block.parameters()) == 64 * 384 * 2 + 2 * 384 == 49_920
    assert mlp_params(64, hidden) == 49_920
    assert all(p.requires_grad for p in block.parameters())
    x = torch.randn(2, 5, 64)
    ln = nn.functional.layer_norm(nn.functional.gelu(x @ block.proj_in.weight.T), (hidden,),
                                  block.norm.weight, block.norm.bias)
    torch.testing.assert_close(block(x), ln @ block.proj_out.weight.T)


@pytest.mark.parametrize("control", ["random-trained", "finetuned"])
def test_trained_lm_arms_train_the_layers_in_float32(control):
    block, info = build_block(family="minilm", size="l6", layers=(5,), control=control, seed=0,
                              visual_dim=64, dtype=torch.bfloat16)
    assert info.weights_source == get_control(control).weights_source
    assert all(p.requires_grad and p.dtype == torch.float32 for p in block.parameters())
    lm = MINILM.layer_params("l6")
    assert sum(p.numel() for p in block.layers.parameters()) == lm
    assert {id(p) for p in block.trainable_parameters()} == {id(p) for p in block.parameters()}
    frozen_twin, _ = build_block(family="minilm", size="l6", layers=(5,),
                                 control="pretrained" if control == "finetuned" else "random",
                                 seed=0, visual_dim=64)
    for a, b in zip(block.layers.parameters(), frozen_twin.layers.parameters(), strict=True):
        torch.testing.assert_close(a, b.float())  # the same weights: trainability differs


def _one_step(model: nn.Module) -> dict[str, bool]:
    """Parameter name -> whether one AdamW step on a random loss changed it."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(torch.randn(2, 6, 64)).pow(2).mean().backward()
    opt.step()
    return {n: not torch.equal(p, before[n]) for n, p in model.named_parameters()}


@pytest.mark.parametrize("control", ["pretrained", "random", "adapters", "mlp",
                                     "random-trained", "finetuned", "visual-block"])
def test_what_trains_and_what_stays_frozen(control):
    torch.manual_seed(0)
    block, _ = _build(control)
    encoder = nn.Module()
    encoder.blocks = nn.Sequential(Block(64, 4, 2.0, qkv_bias=True))
    insert_after_last_block(encoder, block)
    model = encoder.blocks
    moved = _one_step(model)
    lm = {n for n, _ in lm_layer_parameters(model)}
    assert all(n.startswith("1." + LM_LAYERS_PREFIX) for n in lm)
    trains_lm = get_control(control).trains_lm
    for n, p in model.named_parameters():
        if n in lm:
            assert p.requires_grad is trains_lm, n
        else:
            assert p.requires_grad, n
        if not p.requires_grad:
            assert not moved[n], n  # frozen: unchanged by the step
    assert all(moved[n] for n in lm) if trains_lm else not any(moved[n] for n in lm)
    assert moved["0.mlp.fc1.weight"]  # the encoder below still trains
    trained = [n for n, p in model.named_parameters() if n.startswith("1.") and p.requires_grad]
    assert trained and all(moved[n] for n in trained), control  # every trainable one moved
    rec = cost_params(model, block, None, "cpu", None)
    assert rec["frozen_params"] == (MINILM.layer_params("l6")
                                    if control in ("pretrained", "random") else 0)
    assert rec["inserted_trainable_params"] == sum(
        p.numel() for p in block.parameters() if p.requires_grad)
    assert (rec["lm_block_params"] != "") is (control == "visual-block")


@pytest.mark.parametrize("task_name", list_tasks())
def test_visual_block_is_one_more_encoder_block_sized_like_the_lm_layer(task_name):
    task = get_task(task_name)
    slot, _ = _build("visual-block", visual_dim=task.visual_dim)
    assert isinstance(slot, VisualBlockSlot) and slot.lm_params == MINILM.layer_params("l6")
    with torch.device("meta"):  # the paper-scale encoders too, without their memory
        model = task.build_model(slot)
    template, made = model.blocks[-2], slot.block
    assert type(made) is type(template) and made is not template
    dim = template.norm1.normalized_shape[0]
    step = 2 * dim + 1  # one more MLP unit: a row of fc1, its bias, a column of fc2
    assert slot.mlp_hidden == made.mlp.fc1.out_features
    assert abs(slot.visual_params - slot.lm_params) <= step / 2, (slot.visual_params, step)
    rec = cost_params(model, slot, None, "cpu", None)
    assert (rec["lm_block_params"], rec["visual_block_params"]) == (slot.lm_params,
                                                                    slot.visual_params)


def test_visual_block_larger_than_the_target_keeps_one_mlp_unit_and_records_it():
    made, hidden = one_more_block(Block(64, 4, 2.0, qkv_bias=True), target=10)
    assert hidden == 1 and made.mlp.fc1.out_features == 1


def test_visual_block_on_an_encoder_of_another_kind_is_a_clear_error():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Conv1d(4, 4, 1))

    slot, _ = _build("visual-block")
    with pytest.raises(TypeError, match=r"control 'visual-block': Conv's last block is a Conv1d"
                                        r".*valid: the other controls"):
        insert_after_last_block(Conv(), slot)
    with pytest.raises(RuntimeError, match="never filled"):
        _build("visual-block")[0](torch.randn(1, 2, 64))


def test_unit_rms_is_the_official_gain_1_rmsnorm_in_float32():
    h = torch.randn(2, 5, 32, dtype=torch.bfloat16) * 3
    ref = h.float() / torch.sqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    out = UnitRMSNorm()(h)
    assert out.dtype == torch.float32 and not list(UnitRMSNorm().parameters())
    torch.testing.assert_close(out, ref)
    assert UnitRMSNorm().eps == 1e-6


def test_final_norm_choices_in_the_block():
    x = torch.randn(2, 5, 64)
    none, _ = _build("pretrained")
    unit, _ = _build("pretrained", final_norm="unit-rms")
    assert none.unit_norm is None and not none.has_final_norm
    assert unit.unit_norm is not None and not unit.has_final_norm
    assert len(list(unit.parameters())) == len(list(none.parameters()))  # gain-1: no params
    unit.load_state_dict(none.state_dict())
    with torch.no_grad():
        h = none.proj_in(x)
        mask = torch.zeros(2, 1, 5, 5)
        h = none.layers[0](h, attention_mask=mask)
        h = h[0] if isinstance(h, tuple) else h
        want = none.proj_out(h.float() * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True)
                                                     + 1e-6))
    torch.testing.assert_close(unit(x), want)
    assert not torch.allclose(none(x), unit(x))
    with pytest.raises(ValueError, match="unknown final norm 'yes'; valid: none, unit-rms, lm"):
        _build("pretrained", final_norm="yes")


def test_lm_final_norm_is_the_lms_own_and_trains_with_finetuned():
    block, _ = build_block(family="opt", size="125m", layers=(11,), control="random-trained",
                           seed=0, visual_dim=16, final_norm="lm")
    assert block.has_final_norm and isinstance(block.layers[-1], nn.LayerNorm)
    assert all(p.requires_grad for p in block.layers[-1].parameters())


def test_every_control_is_in_the_report_style_and_paper_names():
    from results.paper import CONTROLS

    assert set(CONTROLS) <= set(list_controls())  # mlp, random-trained, finetuned: ours
    styles = [get_control(c).style for c in list_controls()]
    assert len(set(styles)) == len(styles)  # every control drawn apart in the figures


def test_lm_lr_scale_is_a_recorded_validated_hyperparameter(capsys):
    from orchestrator import cli
    from orchestrator.plan import build_plan

    spec = cli.spec_from_args(cli.build_parser().parse_args(
        ["--controls", "finetuned", "--lm-lr-scale", "0.1"]))
    plan = build_plan(spec)
    assert plan and {t.to_config()["lm_lr_scale"] for t in plan} == {0.1}
    assert {t.control for t in plan} == {"finetuned"}
    assert cli.main(["--lm-lr-scale", "0", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lmblocks-sweep: error: bad lm_lr_scale 0.0; valid: a finite number > 0"


def test_a_legacy_preset_final_norm_bool_reads_as_lm_or_none(tmp_path):
    from orchestrator.spec import load_spec

    for raw, want in (("true", "lm"), ("false", "none"), ("unit-rms", "unit-rms")):
        path = tmp_path / f"p{want}.yaml"
        path.write_text(f"families: [opt]\nfinal_norm: {raw}\n")
        assert load_spec(path).hparams.final_norm == want


def test_every_control_builds_with_frozen_block_semantics_kept():
    """The frozen arms stay what they were: frozen, excluded from trainable_parameters."""
    for control in ("pretrained", "random"):
        block, _ = _build(control)
        assert isinstance(block, FrozenLMBlock)
        assert not any(p.requires_grad for p in block.layers.parameters())
        assert {id(p) for p in block.trainable_parameters()} == {
            id(block.proj_in.weight), id(block.proj_out.weight)}


def test_the_cost_table_shows_the_inserted_and_the_visual_block_counts():
    import pandas as pd

    from results.tables import cost_table

    base = {"task": "digits", "family": "minilm", "size": "l6", "layers": "5", "n": 2,
            "mean": 0.9, "frozen_params": 0, "trainable_params": 2e6,
            "gflops_forward_per_sample": 1.0, "gflops_train_step_per_sample": 3.0,
            "samples_per_s": 10.0, "data_wait_share": 0.0, "peak_memory_bytes": 2**30}
    summary = pd.DataFrame([
        {**base, "control": "visual-block", "inserted_trainable_params": 1_774_456,
         "lm_block_params": 1_774_464, "visual_block_params": 1_774_456},
        {**base, "control": "mlp", "inserted_trainable_params": 49_920,
         "lm_block_params": float("nan"), "visual_block_params": float("nan")}])
    t = cost_table(summary).set_index("control")
    assert t.loc["visual-block", ["lm_block_M", "visual_block_M"]].tolist() == [1.774, 1.774]
    assert t.loc["mlp", "inserted_trainable_M"] == 0.05
    assert "lm_block_M" not in cost_table(summary.iloc[1:]).columns  # no visual-block cell


def test_a_trained_block_asks_for_the_memory_of_its_optimizer_state():
    from experiments.memory_model import step_memory
    from experiments.trial import TrialSpec

    def need(control: str):  # the layers the plan gives each control
        layers = () if get_control(control).layers == "none" else (31,)
        return step_memory(TrialSpec("llama", "2-7b", layers, "digits", control, 0))

    weights = get_family("llama").layer_params("2-7b")
    for control in ("finetuned", "random-trained", "visual-block"):
        assert need(control).fixed - need("pretrained").fixed == pytest.approx(
            weights * (16 - 2)), control
        assert need(control).per_sample > need("pretrained").per_sample  # its activations
    assert need("random") == need("pretrained")
    assert need("mlp").fixed == need("none").fixed  # no LM layer: no frozen weights
    assert need("mlp").per_sample > need("none").per_sample  # its two LM-wide linears


@pytest.mark.parametrize("control", ["finetuned", "visual-block", "mlp"])
def test_a_trial_of_a_capacity_control_trains_and_records_it(control):
    from experiments.training import run_trial
    from experiments.trial import Hyperparameters, TrialSpec

    layers = () if control == "mlp" else (5,)
    hp = Hyperparameters(epochs=1, batch_size=64, final_norm="unit-rms", lm_lr_scale=0.5)
    spec = TrialSpec("minilm", "l6", layers, "digits", control, 0, hp)
    seen = []
    info = run_trial(spec, lambda m, s: seen.append((m, s)), cpus=1)
    (metrics, state), = seen
    assert info.weights_source == metrics["weights_source"] == get_control(control).weights_source
    assert spec.to_config()["final_norm"] == "unit-rms" and spec.to_config()["lm_lr_scale"] == 0.5
    assert metrics["frozen_params"] == 0 and metrics["inserted_trainable_params"] > 0
    lm = MINILM.layer_params("l6")
    if control == "finetuned":  # the trained LM layer is in the checkpoint
        assert metrics["inserted_trainable_params"] == lm + 2 * 64 * 384
        assert sum(v.numel() for k, v in state.model.items() if ".layers.0." in k) == lm
    if control == "visual-block":
        assert metrics["lm_block_params"] == lm
        assert abs(metrics["visual_block_params"] - lm) <= (2 * 64 + 1) / 2
    else:
        assert metrics["lm_block_params"] == metrics["visual_block_params"] == ""
