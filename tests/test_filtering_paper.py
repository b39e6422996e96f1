"""Information filtering as the paper measures it (App. A): the centred frequency, the
best-threshold IoU against the informative-token masks, the class token's attention read in
the LM block; and that a trial logs them."""

from __future__ import annotations

import dataclasses
import itertools
import math
import types

import numpy as np
import pytest
import torch

from encoders.lm.controls import build_block
from encoders.lm.frozen_block import FrozenLMBlock
from encoders.lm.registry import get_family, list_families
from experiments.datasets.digits import build_digits as build_data
from experiments.probe import (
    best_threshold_iou,
    lm_block_attention,
    mean_iou,
    minmax_normalise,
    probe,
    probe_filtering,
    token_frequency_centred,
)
from experiments.tasks.digits import build_model, ink_patches


def test_centred_frequency_is_the_phase_norm_after_the_mean_phase():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    spectrum = np.fft.fft(tokens.numpy(), axis=-1)
    spectrum[..., [0, 3]] = spectrum[..., [0, 3]].real  # the real bins of a real signal
    phase = np.angle(spectrum)  # (B, T, D)
    expected = np.linalg.norm(phase - phase.mean(axis=1, keepdims=True), axis=-1)
    np.testing.assert_allclose(token_frequency_centred(tokens).numpy(), expected, rtol=1e-5)
    # a negative DC bin has phase pi whatever the sign of its rounding noise
    neg = -torch.ones(1, 2, 6)
    neg[0, 1] = 1.0
    torch.testing.assert_close(token_frequency_centred(neg)[0], torch.full((2,), math.pi / 2))
    # by hand: e_1 has phases (0, -pi/2, pi, pi/2), a constant token phases 0; mean halves them
    two = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]]])
    half = math.pi / 2 * math.sqrt(1.5)  # |(0, -pi/4, pi/2, pi/4)|
    torch.testing.assert_close(token_frequency_centred(two)[0], torch.tensor([half, half]))
    # padding: the mean phase is over the real tokens only
    real = torch.tensor([[True, True, True, False, False]] * 2)
    padded = token_frequency_centred(tokens.float(), real)
    torch.testing.assert_close(padded[:, :3], token_frequency_centred(tokens[:, :3].float()))


def test_a_map_equal_to_the_mask_scores_one_and_its_inverse_only_the_whole_image():
    mask = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert best_threshold_iou(mask.float(), mask).item() == pytest.approx(1.0)
    # the inverted map: its only set holding any mask token is the whole image, IoU 3/8
    assert best_threshold_iou(1 - mask.float(), mask).item() == pytest.approx(3 / 8)


def test_best_threshold_iou_by_hand():
    values = torch.tensor([[0.9, 0.8, 0.5, 0.4, 0.1, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    # top k = 1..6: IoU 0, 1/4, 2/4, 2/5, 3/5, 3/6 -> best 3/5 (threshold at 0.1)
    assert best_threshold_iou(values, mask).item() == pytest.approx(3 / 5)
    # a threshold cannot split tied values: {0, 1} or everything, never token 0 alone
    tied = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert best_threshold_iou(tied, torch.tensor([[1, 0, 0, 0]], dtype=torch.bool)).item() == 0.5


def test_best_threshold_iou_matches_a_brute_force_sweep_with_padding():
    g = torch.Generator().manual_seed(1)
    values = torch.randint(0, 5, (6, 9), generator=g).float()  # many ties
    mask = torch.rand(6, 9, generator=g) < 0.4
    mask[:, 0] = True
    real = torch.arange(9)[None] < torch.tensor([9, 9, 7, 5, 3, 8])[:, None]
    got = best_threshold_iou(values, mask, real)
    for b in range(6):
        v, m = values[b][real[b]], mask[b][real[b]]
        v = (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else torch.zeros_like(v)
        best = max(((v >= t) & m).sum() / ((v >= t) | m).sum() for t in v.unique())
        assert got[b].item() == pytest.approx(float(best)), b


def test_iou_is_invariant_to_scaling_and_shifting_the_map():
    g = torch.Generator().manual_seed(2)
    values = torch.rand(4, 16, generator=g)
    mask = torch.rand(4, 16, generator=g) < 0.5
    base = best_threshold_iou(values, mask)
    for scale, shift in itertools.product((0.01, 3.0, 250.0), (-7.0, 0.0, 40.0)):
        torch.testing.assert_close(best_threshold_iou(values * scale + shift, mask), base)
    norm = minmax_normalise(values * 250 + 40)
    assert norm.amin(-1).eq(0).all() and norm.amax(-1).eq(1).all()
    torch.testing.assert_close(norm, minmax_normalise(values))


def test_images_without_informative_tokens_are_left_out_of_the_mean():
    values = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    mask = torch.tensor([[True, False], [False, False]])
    ious = best_threshold_iou(values, mask)
    assert ious[0] == 1.0 and ious[1].isnan()
    assert mean_iou(values, mask) == 1.0
    assert mean_iou(values, torch.zeros_like(mask)) is None


def _digits_model(control="pretrained", layers=(5,)):
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=layers, control=control, seed=0,
                           visual_dim=64)
    model = build_model(block).eval()
    x = torch.stack([build_data()[1][i][0] for i in range(4)])
    return model, x


def test_lm_block_attention_is_the_last_lm_layers_softmax():
    model, x = _digits_model(layers=(4, 5))
    block = model.blocks[-1]
    attn = block.layers[-1].attention.self  # BertSelfAttention of the last LM layer
    seen, inputs = {}, {}
    def keep_input(module, args, kwargs):
        inputs["h"] = args[0] if args else kwargs["hidden_states"]

    pre = attn.register_forward_pre_hook(keep_input, with_kwargs=True)
    expected_out = model(x)
    with torch.no_grad(), lm_block_attention(block, seen) as found:
        out = model(x)
    pre.remove()
    assert found and attn.config._attn_implementation == "sdpa"  # switched back
    torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-5)  # eager == sdpa
    weights = seen["lm_attn"]
    b, t = x.shape[0], 17
    assert weights.shape == (b, attn.num_attention_heads, t, t)
    torch.testing.assert_close(weights.sum(-1), torch.ones(b, attn.num_attention_heads, t))
    h = inputs["h"]  # recomputed by hand from the last layer's input
    q = attn.query(h).view(b, t, -1, attn.attention_head_size).transpose(1, 2)
    k = attn.key(h).view(b, t, -1, attn.attention_head_size).transpose(1, 2)
    by_hand = (q @ k.transpose(-1, -2) * attn.scaling).softmax(-1)
    torch.testing.assert_close(weights, by_hand, rtol=1e-4, atol=1e-6)


def test_lm_cls_attention_follows_the_lm_block_not_the_visual_one():
    model, x = _digits_model()
    first = probe(model, x, ink_patches(x))
    lm, vis = first.maps["lm_cls_attn"], first.maps["cls_attn"]
    assert not torch.allclose(lm, vis)
    assert ((lm > 0) & (lm.sum(-1, keepdim=True) < 1)).all()  # patches only: cls left out
    with torch.no_grad():
        model.blocks[-1].layers[-1].attention.self.query.weight.mul_(3.0)
    second = probe(model, x, ink_patches(x))
    assert not torch.allclose(second.maps["lm_cls_attn"], lm)  # the LM block's weights moved it
    torch.testing.assert_close(second.maps["cls_attn"], vis)  # upstream: untouched
    assert "miou_lm_cls_attn" in first.metrics() and "conc_lm_cls_attn" in first.metrics()


@pytest.mark.parametrize("control", ["adapters", "none"])
def test_without_lm_layers_there_is_no_lm_attention_metric(control):
    model, x = _digits_model(control)
    metrics = probe(model, x, ink_patches(x)).metrics()
    assert "miou_act_after" in metrics and "miou_freq_centred_after" in metrics
    assert not any("lm_cls_attn" in k for k in metrics)


def test_a_task_without_informative_tokens_logs_no_filtering_metric():
    model, x = _digits_model()
    task = types.SimpleNamespace(informative_tokens=None)
    assert probe_filtering(model, task, x) == {}


def test_a_trial_reports_and_mlflow_logs_the_paper_measures(tmp_path):
    from mlflow.tracking import MlflowClient

    from experiments.training import run_trial
    from experiments.trial import Hyperparameters, TrialSpec
    from orchestrator.plan import build_plan
    from orchestrator.spec import SweepSpec
    from orchestrator.tracking import MlflowTrialLogger, start_parent_run

    seen = []
    hp = Hyperparameters(epochs=1, lr=1e-3, batch_size=64)
    run_trial(TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 0, hp),
              lambda m, s: seen.append(m))
    names = [f"{kind}_{m}" for kind in ("conc", "miou") for m in (
        "freq_centred_before", "freq_centred_after", "lm_cls_attn")] + [
        f"miou_{m}" for m in ("act_before", "act_after", "cls_attn")]
    result = seen[-1]
    for name in names:
        assert 0 < result[name] <= 1, name
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = SweepSpec(tasks=("digits",), controls=("pretrained",))
    parent = start_parent_run(MlflowClient(uri), "probe", spec, 1)
    logger = MlflowTrialLogger(uri, "probe", parent)
    trial = types.SimpleNamespace(trial_id="t0", config=build_plan(spec)[0].to_config())
    logger.log_trial_start(trial)
    logger.log_trial_result(1, trial, {**result, "done": False})
    logged = MlflowClient(uri).get_run(logger.runs["t0"]).data.metrics
    assert {n: logged.get(n) for n in names} == pytest.approx({n: result[n] for n in names})


@pytest.mark.parametrize("family", list_families())
def test_every_family_gives_its_attention_weights_to_the_probe(family):
    """SDPA computes no weights: the probe's switch to eager must work for every family's
    attention module, and give the same block output."""
    fam = get_family(family)
    real = fam.size(fam.default_size)
    extra = {**real.extra, **({"num_key_value_heads": 2} if "num_key_value_heads" in real.extra
                              else {}), **({"word_embed_proj_dim": 32}
                                           if "word_embed_proj_dim" in real.extra else {})}
    config = fam.make_config(dataclasses.replace(real, hidden_size=32, num_layers=2, num_heads=4,
                                                 ffn_dim=64, extra=extra))
    config.vocab_size = 64
    torch.manual_seed(0)
    layers = [m for m in fam.model_class(config).modules() if isinstance(m, fam.layer_class)]
    config._attn_implementation = "sdpa"  # as the block factory builds it
    block = FrozenLMBlock(layers, 8, 32, fam.layer_kwargs(config)).eval()
    x = torch.randn(2, 5, 8)
    seen = {}
    with torch.no_grad():
        expected = block(x)
        with lm_block_attention(block, seen) as found:
            got = block(x)
    assert found and config._attn_implementation == "sdpa"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    weights = seen["lm_attn"]
    assert weights.shape == (2, 4, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))
    assert not torch.allclose(weights, torch.full_like(weights, 0.2))  # not uniform: real scores


def test_the_reports_filtering_table_lists_the_paper_measures():
    import pandas as pd

    from results import tables
    from results.stats import summarize

    def run(control, seed, acc, **m):
        lm = control != "none"
        return {"task": "digits", "family": "minilm" if lm else "", "size": "l6" if lm else "",
                "layers": "5" if lm else "", "control": control, "seed": seed,
                "status": "FINISHED", "val_acc": acc, "run_id": f"{control}{seed}",
                "layer_index": 5.0 if lm else float("nan"),
                "lm_params": 22_713_216.0 if lm else float("nan"),
                "conc_act_before": 0.5, "conc_act_after": 0.5, "miou_act_before": 0.6,
                "miou_act_after": 0.6 + 0.1 * lm, "miou_freq_centred_before": 0.7,
                "miou_freq_centred_after": 0.8, "miou_cls_attn": 0.65, **m}

    runs = pd.DataFrame([run("none", s, 0.5) for s in range(2)] + [
        run("pretrained", s, 0.6, miou_lm_cls_attn=0.9, conc_lm_cls_attn=0.7) for s in range(2)])
    table = tables.filtering_table(summarize(runs)).set_index("control")
    assert table.loc["pretrained", "miou_act_after"] == pytest.approx(0.7)
    assert table.loc["pretrained", "miou_freq_centred_after"] == pytest.approx(0.8)
    assert table.loc["pretrained", "miou_lm_cls_attn"] == pytest.approx(0.9)
    assert table.loc["none", "miou_act_after"] == pytest.approx(0.6)
    assert math.isnan(table.loc["none", "miou_lm_cls_attn"])  # no LM block: absent, not 0


def test_a_module_inserted_in_place_of_the_lm_block_is_measured_around():
    model, x = _digits_model("none")
    model.blocks.append(torch.nn.Linear(64, 64))  # a control's module: no attention of its own
    result = probe(model, x, ink_patches(x))
    assert not torch.allclose(result.maps["act_before"], result.maps["act_after"])
    assert "lm_cls_attn" not in result.maps and result.maps["cls_attn"].shape == (4, 16)
