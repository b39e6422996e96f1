"""The ``--positions`` axis: its words resolved per encoder, one mechanism that moves the
inserted module within every task's ``blocks`` list (the encoder's own forward runs it
there), the probe and Bai et al.'s similarity read at that place, and the plan, key and
dry run per position."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from encoders.lm.controls import build_block
from encoders.visual.placement import (
    PositionError,
    inserted_index,
    name_of,
    place_block,
    place_of,
    resolve_positions,
)
from encoders.visual.vit import insert_after_last_block, small_vit
from experiments.batches import forward
from experiments.block_measures import block_similarity
from experiments.encoder_depth import encoder_depth
from experiments.probe import around_block, probe
from experiments.tasks.registry import get_task, list_tasks
from orchestrator.plan import build_plan
from orchestrator.spec import SpecError, SweepSpec


def test_words_name_places_of_an_encoder_once():
    assert [place_of(p, 12) for p in ("end", "middle", "start", "0", "5", "-1", "-12")] == [
        12, 6, 0, 1, 6, 12, 1]
    assert [name_of(p, 12) for p in ("end", "middle", "start", "0", "-1", "-12")] == [
        "end", "middle", "start", "0", "end", "0"]
    assert resolve_positions(["end", "middle", "start"], 12) == ["end", "middle", "start"]
    assert resolve_positions(["all"], 3) == ["start", "0", "1", "end"]
    assert resolve_positions(["end"], None) == ["end"]  # no block list: only the end
    assert resolve_positions(["middle"], 1) == ["start"]  # one block: its middle is its start


@pytest.mark.parametrize("values, depth, message", [
    (["top"], 12, "unknown position 'top'; valid: end, middle, start, an index i"),
    (["12"], 12, "position '12' is outside the encoder's 12 blocks; valid: 0..11, -1..-12"),
    (["-13"], 12, "position '-13' is outside"),
    (["-0"], 12, "unknown position '-0'"),
    (["end", "-1"], 12, ("positions 'end' and '-1' are the same place in the encoder (12 of "
                        "its 12 blocks before it); valid: each place once")),
    (["middle", "5"], 12, "positions 'middle' and '5' are the same place"),
    (["start"], None, "position 'start': the encoder keeps no list of blocks"),
    ([], 12, "empty --positions; valid: end, middle, start"),
])
def test_bad_positions_are_one_line_naming_the_value_and_the_valid_ones(values, depth, message):
    with pytest.raises(PositionError) as err:
        resolve_positions(values, depth)
    assert message in str(err.value) and "\n" not in str(err.value)


class Tap(nn.Module):
    """An inserted module that passes its tokens on unchanged and records that it ran."""

    def __init__(self, calls: list) -> None:
        super().__init__()
        self.calls = calls

    def forward(self, x, *args, **kwargs):
        self.calls.append("tap")
        return x


EMBEDDED = [t for t in list_tasks() if get_task(t).embedded]


@pytest.mark.parametrize("task", EMBEDDED)
@pytest.mark.parametrize("position", ["start", "middle", "0"])
def test_every_embedded_task_runs_its_inserted_module_where_the_position_says(task, position):
    """One mechanism for every encoder: the module moves within ``blocks`` and the encoder's
    own forward (timm's Sequential, or ``run_blocks`` with its padding masks) calls it
    there: the order of calls is the list's."""
    t = get_task(task)
    calls: list = []
    tap = Tap(calls)
    model = t.build_model(tap).eval()
    depth = len(model.blocks) - 1
    assert depth == encoder_depth(task)
    place = place_block(model, position, task)
    assert place == place_of(position, depth) and inserted_index(model.blocks) == place
    for i, block in enumerate(model.blocks):
        if block is not tap:
            block.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    inputs, _ = t.example(2)
    with torch.no_grad():
        forward(model, inputs)
    order = [c for c in calls if c == "tap" or c in range(len(model.blocks))]
    assert order[:len(model.blocks)] == ["tap" if b is tap else i
                                         for i, b in enumerate(model.blocks)]


def test_end_leaves_every_model_as_built_and_none_has_no_place():
    vit = insert_after_last_block(small_vit(img_size=8, in_chans=1, num_classes=10), nn.Identity())
    before = list(vit.blocks)
    assert place_block(vit, "end") == 2 and list(vit.blocks) == before
    assert place_block(small_vit(img_size=8, in_chans=1, num_classes=10), "start") is None

    class NoBlocks(nn.Module):
        def forward(self, x):
            return x

    assert place_block(NoBlocks(), "end") is None
    with pytest.raises(PositionError, match="keeps no list of blocks to place the module "
                                            "between; valid: end"):
        place_block(NoBlocks(), "middle", "task 'flat'")


def test_the_probe_and_the_similarity_read_the_module_where_it_is():
    """At ``start`` the module's input is the token embedding, not the last block's output;
    the probe's "before" and the CKA's input are that input, its output "after"."""
    torch.manual_seed(0)
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="random", seed=0,
                           visual_dim=64)
    vit = insert_after_last_block(small_vit(img_size=8, in_chans=1, num_classes=10), block)
    place_block(vit, "start")
    neighbour, module = around_block(vit)
    assert module is block and neighbour is vit.blocks[1]  # the block after it
    seen = {}
    block.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    block.register_forward_hook(lambda m, a, o: seen.__setitem__("y", o))
    x = torch.rand(4, 1, 8, 8)
    got = block_similarity(vit, x)
    from tests.test_block_measures import hsic_cka

    assert got == pytest.approx(hsic_cka(seen["x"].flatten(0, 1), seen["y"].flatten(0, 1)),
                                rel=1e-6)
    with torch.no_grad():
        embedded = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    assert torch.allclose(seen["x"], embedded)
    result = probe(vit, x, torch.ones(4, 16, dtype=torch.bool))
    from experiments.probe import token_activation

    want = token_activation(embedded)[:, 1:]
    assert torch.allclose(result.maps["act_before"], want, atol=1e-5)


def test_the_plan_runs_each_inserting_control_once_per_place_and_none_once():
    spec = SweepSpec(tasks=("digits",), layers=("4", "5"), positions=("end", "start"),
                     controls=("pretrained", "random", "none"), seeds=(0,))
    plan = build_plan(spec)
    pre = sorted((t.layer_label, t.position) for t in plan if t.control == "pretrained")
    assert pre == [("4", "end"), ("4", "start"), ("5", "end"), ("5", "start")]
    assert sorted(t.position for t in plan if t.control == "random") == ["end", "start"]
    assert [t.position for t in plan if t.control == "none"] == ["end"]  # inserts nothing
    # the cells at the end are the cells a sweep without the axis planned: same keys
    old = build_plan(SweepSpec(tasks=("digits",), layers=("4", "5"),
                               controls=("pretrained", "random", "none"), seeds=(0,)))
    assert {t.key for t in old} == {t.key for t in plan if t.position == "end"}
    # "all" of digits' two blocks: start, after block 0, end
    every = build_plan(SweepSpec(tasks=("digits",), positions=("all",), seeds=(0,)))
    assert [t.position for t in every] == ["start", "0", "end"]


@pytest.mark.parametrize("positions, message", [
    (("top",), "unknown position 'top'; valid: end, middle, start"),
    (("2",), "position '2' is outside the encoder's 2 blocks; valid: 0..1"),
    (("end", "1"), "positions 'end' and '1' are the same place in task 'digits''s encoder"),
])
def test_the_plan_refuses_bad_positions_in_one_line(positions, message):
    with pytest.raises(SpecError) as err:
        build_plan(SweepSpec(tasks=("digits",), positions=positions))
    assert message in str(err.value) and "\n" not in str(err.value)
