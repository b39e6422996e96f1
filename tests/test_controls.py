"""The controls table is the one place a control is defined: registering one entry and its
builder is enough for the plan, the block factory, the run's weights' source, the report's
pairing, tables and figures to handle it. Shown with a control the paper does not have: the
pretrained layer with its weights shuffled (same values, no learned structure)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from encoders.lm import controls
from encoders.lm.block_factory import BlockInfo, BlockRequest, pretrained_block
from encoders.lm.controls import Control, build_block, get_control, list_controls
from experiments.trial import TrialSpec
from orchestrator.plan import build_plan
from orchestrator.spec import SweepSpec
from results import plots, tables
from results.stats import summarize
from tests.conftest import assert_figure


def shuffled_block(req: BlockRequest) -> tuple[torch.nn.Module, BlockInfo]:
    block, info = pretrained_block(req)
    g = torch.Generator().manual_seed(req.seed)
    with torch.no_grad():
        for p in block.layers.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=g)].view_as(p))
    return block, dataclasses.replace(info, checkpoint=f"shuffled:{info.checkpoint}")


@pytest.fixture
def shuffled(monkeypatch):
    monkeypatch.setattr(controls, "_CONTROLS", dict(controls._CONTROLS))  # restored after
    return controls.register_control(Control(
        "shuffled", "shuffled pretrained block", "pretrained", layers="last", adapters=True,
        per_lm=True, reference=True, style=("tab:purple", "--"), build=shuffled_block))


def test_the_shipped_table():
    assert list_controls() == ["pretrained", "random", "adapters", "none", "mlp",
                               "random-trained", "finetuned", "visual-block", "auxiliary"]
    assert [get_control(c).weights_source for c in list_controls()] == [
        "pretrained", "random", "none", "none", "none", "random", "pretrained", "none",
        "pretrained"]
    assert [c for c in list_controls() if get_control(c).training_only] == ["auxiliary"]
    assert [c for c in list_controls() if get_control(c).trains_lm] == [
        "random-trained", "finetuned"]
    assert get_control("none").pair_on == ("task", "seed")
    assert get_control("random").pair_on == ("family", "size", "position", "task", "seed")
    with pytest.raises(ValueError, match="already registered"):
        controls.register_control(get_control("none"))
    with pytest.raises(KeyError, match="unknown control 'frozen'; valid: pretrained, random"):
        get_control("frozen")


def test_a_new_control_is_one_entry_and_its_builder(shuffled, tmp_path):
    plan = build_plan(SweepSpec(layers=("0", "5"), controls=("pretrained", "shuffled", "none"),
                                seeds=(0, 1)))
    rows = [t for t in plan if t.control == "shuffled"]
    assert [(t.layers, t.seed) for t in rows] == [((5,), 0), ((5,), 1)]  # "last": one layer
    assert rows[0].weights_source == "pretrained"
    assert rows[0].run_name == "minilm-l6-L5-shuffled-digits-s0"
    assert TrialSpec.from_config(rows[0].to_config()) == rows[0]

    block, info = build_block(family="minilm", size="l6", layers=(5,), control="shuffled",
                              seed=0, visual_dim=64)
    real, _ = build_block(family="minilm", size="l6", layers=(5,), control="pretrained",
                          seed=0, visual_dim=64)
    w, w0 = block.layers[0].output.dense.weight, real.layers[0].output.dense.weight
    assert not torch.equal(w, w0) and torch.equal(w.flatten().sort().values,
                                                  w0.flatten().sort().values)
    assert info.weights_source == "pretrained" and info.checkpoint.startswith("shuffled:")

    # the report: paired against it, a column of table 3, a style in the figures
    runs = pd.DataFrame([
        {"task": "digits", "family": f, "size": s, "layers": lay, "control": c, "seed": seed,
         "status": "FINISHED", "val_acc": v + 0.01 * seed, "run_id": f"{c}{lay}{seed}",
         "layer_index": float(lay) if lay else float("nan"),
         "lm_params": 22_713_216.0 if f else float("nan")}
        for f, s, lay, c, v in [("minilm", "l6", "5", "pretrained", 0.8),
                                ("minilm", "l6", "5", "shuffled", 0.6),
                                ("", "", "", "none", 0.7)]
        for seed in (0, 1, 2)])
    summary = summarize(runs, control="shuffled")
    pre = summary.set_index("control").loc["pretrained"]
    assert pre["delta"] == pytest.approx(0.2) and pre["pairs"] == 3
    # no-LM cells first, then each LM's cells in the table's order
    assert list(summary["control"]) == ["none", "pretrained", "shuffled"]
    table = tables.by_control(summary, layer="5")
    assert list(table.columns) == ["task", "family", "size", "shuffled", "auxiliary",
                                   "visual-block",
                                   "finetuned", "random-trained", "mlp", "none", "adapters",
                                   "random", "pretrained (layer 5)"]
    assert table["shuffled"].iloc[0].startswith("0.610 ± 0.010")
    assert_figure(plots.metric_vs_layer(summary, tmp_path / "layers.png"))
