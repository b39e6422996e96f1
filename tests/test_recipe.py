"""The recipe as hyperparameters: parameter groups (weight decay, lr scales), gradient
clipping, drop path, EMA, repeated augmentation, the per-size lr scale, and the presets."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch import nn

from encoders.lm.frozen_block import FrozenLMBlock
from encoders.visual.vit import insert_after_last_block, small_vit
from experiments.loading import RepeatedEpochSampler, loader_settings, train_loader
from experiments.param_groups import group_names, param_groups
from experiments.recipe import effective_lr
from experiments.regularisation import (
    apply_drop_path,
    clipper,
    ema_scores,
    make_ema,
    timm_blocks,
)
from experiments.training import train_epoch
from experiments.trial import Hyperparameters, TrialSpec


class ToyLayer(nn.Module):
    """An LM layer's shape for the groups: a 2-D weight, a bias, a norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h, attention_mask=None, **_):
        return self.norm(h + self.fc(h))


def vit_with_block(trainable_lm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    vit = small_vit(img_size=8, in_chans=1, num_classes=10, embed_dim=16, depth=2)
    block = FrozenLMBlock([ToyLayer(24)], visual_dim=16, lm_dim=24, trainable=trainable_lm)
    return insert_after_last_block(vit, block)


def test_no_weight_decay_on_1d_params_biases_pos_embed_and_cls_token():
    model = vit_with_block()
    names = group_names(model, param_groups(model, Hyperparameters(weight_decay=0.05)))
    decayed = {n for n, g in names.items() if g.endswith("/decay")}
    assert decayed == {
        "patch_embed.proj.weight", "head.weight", "blocks.2.proj_in.weight",
        "blocks.2.proj_out.weight",
        *(f"blocks.{i}.{w}.weight" for i in (0, 1)
          for w in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))}
    for name in ("cls_token", "pos_embed", "patch_embed.proj.bias", "blocks.0.norm1.weight",
                 "blocks.1.attn.qkv.bias", "norm.weight", "norm.bias", "head.bias"):
        assert names[name] == "rest/no_decay", name
    # the frozen LM layer is in no group at all
    assert not [n for n in names if ".layers." in n]
    groups = param_groups(model, Hyperparameters(weight_decay=0.05))
    assert {g["name"]: g["weight_decay"] for g in groups} == {
        "adapter/decay": 0.05, "rest/decay": 0.05, "rest/no_decay": 0.0}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable


def test_lmblocks_encoders_own_tokens_and_positions_are_not_decayed():
    """Encoders that declare no ``no_weight_decay()``: found by name; a point encoder's
    positional MLP (``pos_embed.0.weight``) is a weight like any other, as in Point-BERT."""
    import experiments.tasks  # noqa: F401
    from experiments.tasks.registry import get_task

    cloud = get_task("shapes3d").build_model(None)
    names = group_names(cloud, param_groups(cloud, Hyperparameters()))
    assert names["cls_token"] == names["cls_pos"] == "rest/no_decay"
    assert names["pos_embed.0.weight"] == "rest/decay"
    pairs = get_task("shape-retrieval").build_model(None)
    names = group_names(pairs, param_groups(pairs, Hyperparameters()))
    assert names["pos_embed"] == names["text.pos"] == names["cls_token"] == "rest/no_decay"


def test_adapter_lm_and_norm_groups_take_their_lr_scales():
    model = vit_with_block(trainable_lm=True)
    hp = Hyperparameters(lr=1e-3, weight_decay=0.05, adapter_lr_scale=0.5, adapter_decay=False,
                         lm_lr_scale=0.1, norm_lr_scale=0.25, size_lr_scale=0.2)
    groups = {g["name"]: g for g in param_groups(model, hp)}
    assert {n: (g["lr_scale"], g["weight_decay"]) for n, g in groups.items()} == {
        "adapter/no_decay": (0.5, 0.0), "lm/decay": (0.1, 0.05), "lm/no_decay": (0.1, 0.0),
        "rest/decay": (1.0, 0.05), "rest/no_decay": (0.25, 0.0)}
    assert groups["adapter/no_decay"]["lr"] == pytest.approx(1e-3 * 0.2 * 0.5)
    names = group_names(model, list(groups.values()))
    assert names["blocks.2.layers.0.fc.weight"] == "lm/decay"
    assert names["blocks.2.layers.0.fc.bias"] == names["blocks.2.layers.0.norm.weight"] == \
        "lm/no_decay"
    # the schedule's lr times each group's scale, step by step
    opt = torch.optim.AdamW(list(groups.values()))
    data = [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))]
    train_epoch(model, data, opt, "cpu", lr=lambda step: 2.0)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx(sorted(
        2.0 * s for s in (0.5, 0.1, 0.1, 1.0, 0.25)))


def _norm_at_step(model, scaler, max_norm):
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            seen.append(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads])).item())
            return super().step(closure)

    opt = Recording(model.parameters(), lr=0.0)
    torch.manual_seed(0)
    data = [(torch.randn(8, 4) * 100, torch.tensor([0, 1] * 4))]
    train_epoch(model, data, opt, "cpu", scaler=scaler, clip=clipper(opt, max_norm))
    return seen[0]


def test_clipping_bounds_the_grad_norm_with_and_without_a_grad_scaler():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    unclipped = _norm_at_step(copy.deepcopy(model), None, 0)
    assert unclipped > 1.0
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    assert _norm_at_step(copy.deepcopy(model), scaler, 0) == pytest.approx(unclipped, rel=1e-4)
    assert _norm_at_step(copy.deepcopy(model), None, 0.5) == pytest.approx(0.5, rel=1e-4)
    # under a scaler the gradients are unscaled before clipping (else 0.5 / 1024 here)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    assert _norm_at_step(copy.deepcopy(model), scaler, 0.5) == pytest.approx(0.5, rel=1e-4)
    assert clipper(torch.optim.SGD(model.parameters(), lr=0.1), 0) is None


def test_drop_path_reaches_the_timm_blocks_and_is_off_in_eval():
    model = vit_with_block()
    plain = copy.deepcopy(model)
    assert apply_drop_path(model, 0.2) == 2  # the inserted LM block is not a timm block
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in timm_blocks(model)]
    assert rates == pytest.approx([0.0, 0.2])
    assert timm_blocks(model)[1].drop_path2.drop_prob == pytest.approx(0.2)
    x = torch.randn(16, 1, 8, 8)
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(x), plain(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))
    with pytest.raises(ValueError, match="does not apply.*no timm blocks"):
        apply_drop_path(nn.Sequential(nn.Linear(2, 2)), 0.1)
    assert apply_drop_path(nn.Sequential(nn.Linear(2, 2)), 0.0) == 0


def test_ema_tracks_the_weights_and_reports_prefixed_scores():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    start = model.weight.detach().clone()
    assert make_ema(model, Hyperparameters(ema_decay=0.0)) is None
    ema = make_ema(model, Hyperparameters(ema_decay=0.75))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    train_epoch(model, data, opt, "cpu", after_step=lambda: ema.update(model))
    after = model.weight.detach()
    assert not torch.allclose(ema.module.weight, after)
    torch.testing.assert_close(ema.module.weight, 0.75 * start + 0.25 * after)
    scores = ema_scores(ema, lambda m: {"val_acc": float(m is ema.module)})
    assert scores == {"ema_val_acc": 1.0}
    assert ema_scores(None, lambda m: {"val_acc": 0.0}) == {}
    # a checkpoint's EMA tensors come back
    again = make_ema(nn.Linear(4, 3), Hyperparameters(ema_decay=0.75),
                     restored=ema.module.state_dict())
    torch.testing.assert_close(again.module.weight, ema.module.weight)


def test_a_trial_with_the_whole_recipe_reports_ema_metrics_and_records_it():
    from experiments.training import run_trial

    hp = Hyperparameters(epochs=1, batch_size=64, drop_path=0.1, ema_decay=0.9, clip_grad=1.0,
                         repeated_aug=3, adapter_lr_scale=0.5, size_lr_scale=0.2)
    seen, states = [], []
    run_trial(TrialSpec("minilm", "l6", (), "digits", "adapters", 0, hp),
              lambda m, s: (seen.append(m), states.append(s)))
    m = seen[0]
    assert 0 <= m["ema_val_acc"] <= 1 and "ema_val_loss" in m
    assert m["effective_lr"] == pytest.approx(1e-3 * 0.2) and m["drop_path_blocks"] == 2
    assert m["lr"] == pytest.approx(1e-3 * 0.2)
    assert states[0].ema and any("proj_in" in k for k in states[0].ema)
    assert sorted(g["name"] for g in states[0].optimizer["param_groups"]) == [
        "adapter/decay", "rest/decay", "rest/no_decay"]
    cfg = TrialSpec("minilm", "l6", (), "digits", "adapters", 0, hp).to_config()
    for name in ("adapter_lr_scale", "adapter_decay", "lm_lr_scale", "norm_lr_scale",
                 "size_lr_scale", "clip_grad", "drop_path", "ema_decay", "repeated_aug"):
        assert cfg[name] == getattr(hp, name)
    back = TrialSpec.from_config({**cfg, "adapter_decay": "False"})
    assert back.hparams.adapter_decay is False


def test_repeated_aug_sampler_repeats_each_index_and_resumes_exactly():
    s = RepeatedEpochSampler(12, seed=3, repeats=3)
    s.set_epoch(0)
    first = list(s)
    counts = Counter(i for _, i, _ in first)
    assert len(first) == len(s) == 12 and set(counts.values()) == {3} and len(counts) == 4
    for index in counts:  # copies 0, 1, 2 of each, consecutive
        assert [c for _, i, c in first if i == index] == [0, 1, 2]
    s.set_epoch(1)
    second = list(s)
    assert {e for e, _, _ in second} == {1} and [i for _, i, _ in second] != [
        i for _, i, _ in first]
    fresh = RepeatedEpochSampler(12, seed=3, repeats=3)
    fresh.set_epoch(1)  # a trial resumed at epoch 1
    assert list(fresh) == second
    other = RepeatedEpochSampler(12, seed=4, repeats=3)
    other.set_epoch(0)
    assert [i for _, i, _ in other] != [i for _, i, _ in first]  # seeded by the trial


class Noisy(torch.utils.data.Dataset):
    """An augmentation: index plus a draw of torch's RNG."""

    def __len__(self):
        return 24

    def __getitem__(self, index):
        return torch.tensor(float(index)) + torch.rand(()), index


def _batches(workers, epoch=0):
    loader, sampler = train_loader(Noisy(), 6, 7, drop_last=False, repeats=3,
                                   **loader_settings(workers, torch.device("cpu")))
    sampler.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_repeated_aug_batches_are_the_same_with_workers_and_copies_differ():
    in_process, workers = _batches(0), _batches(2)
    assert len(in_process) == 4
    for (a, i), (b, j) in zip(in_process, workers, strict=True):
        assert torch.equal(i, j) and torch.equal(a, b)
    values = torch.cat([x for x, _ in in_process])
    indices = torch.cat([y for _, y in in_process])
    for index in indices.unique():  # each copy augmented from its own seed
        assert len(set(values[indices == index].tolist())) == 3
    assert torch.equal(torch.cat([x for x, _ in _batches(0, epoch=1)]),
                       torch.cat([x for x, _ in _batches(0, epoch=1)]))


def test_lr_scale_by_size_applies_to_planned_trials():
    from orchestrator.plan import build_plan
    from orchestrator.spec import SpecError, spec_from_dict

    spec = spec_from_dict({"families": ["opt"], "sizes": ["125m", "1.3b"], "layers": ["last"],
                           "controls": ["pretrained", "none"], "lr": 1e-3,
                           "lr_scale_by_size": {"opt/125m": 0.2}})
    scales = {(t.size, t.control): t.hparams.size_lr_scale for t in build_plan(spec)}
    assert scales == {("125m", "pretrained"): 0.2, ("1.3b", "pretrained"): 1.0,
                      ("", "none"): 1.0}
    (small,) = [t for t in build_plan(spec) if t.size == "125m"]
    assert effective_lr(small.hparams) == pytest.approx(2e-4)
    assert small.to_config()["size_lr_scale"] == 0.2
    for bad, match in (({"opt/12m": 0.2}, "unknown family/size"),
                       ({"opt/125m": 0}, "bad scale")):
        with pytest.raises(SpecError, match=match):
            build_plan(spec.replace(lr_scale_by_size=bad))
    with pytest.raises(SpecError, match="lr_scale_by_size"):
        spec_from_dict({"lr_scale_by_size": [0.2]})


def test_presets_carry_the_recipe():
    from orchestrator.plan import build_plan
    from orchestrator.spec import load_spec

    deit = load_spec("imagenet_deit").hparams
    assert (deit.epochs, deit.lr, deit.batch_size, deit.warmup_epochs, deit.drop_path,
            deit.ema_decay, deit.repeated_aug, deit.clip_grad, deit.mixup, deit.cutmix) == (
        300, 1e-3, 1024, 20, 0.1, 0.99996, 3, 0.0, 0.8, 1.0)
    short = load_spec("imagenet_100ep")
    assert short.hparams.epochs == 100 and short.hparams.warmup_epochs == 20
    scales = {t.size: t.hparams.size_lr_scale for t in build_plan(short) if t.family}
    assert scales == {"125m": 0.2, "350m": 0.2, "1.3b": 1.0, "2.7b": 1.0, "6.7b": 1.0}
    cloud = load_spec("pointcloud").hparams
    assert (cloud.adapter_lr_scale, cloud.adapter_decay, cloud.norm_lr_scale,
            cloud.clip_grad) == (0.5, False, 0.1, 10.0)


@pytest.mark.parametrize("flag,value", [("--clip-grad", "nan"), ("--drop-path", "1"),
                                        ("--ema-decay", "-0.1"), ("--repeated-aug", "-1"),
                                        ("--adapter-lr-scale", "0")])
def test_bad_recipe_flags_exit_2_with_one_line(capsys, flag, value):
    from orchestrator import cli

    assert cli.main(["--dry-run", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag.removeprefix("--").replace("-", "_") in err[0]


def test_recipe_flags_reach_the_trials():
    from orchestrator import cli
    from orchestrator.plan import build_plan

    args = cli.build_parser().parse_args(
        ["--clip-grad", "1", "--drop-path", "0.1", "--ema-decay", "0.99", "--repeated-aug",
         "3", "--adapter-lr-scale", "0.5"])
    hp = build_plan(cli.spec_from_args(args))[0].hparams
    assert (hp.clip_grad, hp.drop_path, hp.ema_decay, hp.repeated_aug, hp.adapter_lr_scale) == (
        1.0, 0.1, 0.99, 3, 0.5)


def test_the_run_records_the_recipe_params_and_the_ema_metrics(tmp_path):
    import types

    from mlflow.tracking import MlflowClient

    from orchestrator.plan import build_plan
    from orchestrator.spec import SweepSpec
    from orchestrator.tracking import MlflowTrialLogger, start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = SweepSpec(controls=("adapters",)).replace(ema_decay=0.99, drop_path=0.1,
                                                     repeated_aug=3, clip_grad=1.0)
    parent = start_parent_run(MlflowClient(uri), "recipe", spec, 1)
    trial = types.SimpleNamespace(trial_id="t0", config=build_plan(spec)[0].to_config(),
                                  last_result=None, error_file=None)
    logger = MlflowTrialLogger(uri, "recipe", parent)
    logger.log_trial_start(trial)
    result = {"epoch": 1, "train_loss": 1.0, "val_acc": 0.5, "ema_val_acc": 0.25,
              "lr": 1e-3, "effective_lr": 1e-3, "drop_path_blocks": 2}
    logger.log_trial_result(1, trial, result)
    data = MlflowClient(uri).get_run(logger.runs["t0"]).data
    assert data.metrics["ema_val_acc"] == 0.25
    assert (data.params["effective_lr"], data.params["drop_path_blocks"]) == ("0.001", "2")
    assert (data.params["ema_decay"], data.params["drop_path"], data.params["repeated_aug"],
            data.params["clip_grad"], data.params["adapter_lr_scale"],
            data.params["size_lr_scale"]) == ("0.99", "0.1", "3", "1.0", "1.0", "1.0")
