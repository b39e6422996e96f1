"""The dry run's cost estimate (``experiments/cost_model.py``, ``orchestrator/estimate.py``):
what it prints, how it scales, and that its numbers are the models' own.

The catalog's per-task constants are recounted from the task's model with FlopCounterMode
(the meta device: shapes only, no data, no compute), and the formulas for the inserted
module are checked against FlopCounterMode on real blocks, for every registered control:
a task or a control that changes its model fails here until its numbers follow.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest

import encoders.lm.families  # noqa: F401  (registers the families)
from encoders.lm.controls import get_control, list_controls
from encoders.lm.registry import get_family, list_families
from experiments import cost_model
from experiments.cost_model import (
    ASSUMED_MFU,
    assumed_gpu,
    encoder_cost,
    inserted_cost,
    trial_cost,
)
from experiments.gpu_peaks import PEAK_BF16_FLOPS, PEAK_TFLOPS_ENV
from experiments.tasks.catalog import CATALOG
from experiments.tasks.registry import list_tasks
from experiments.trial import Hyperparameters, TrialSpec
from orchestrator import cli

# the CLI tests' guard: no sweep may start, a scratch dir, offline (autouse once imported)
from tests.test_cli import no_sweep_may_start  # noqa: F401

SMALL = ["--family", "opt", "--sizes", "125m", "1.3b", "--layers", "last",
         "--controls", "pretrained", "none", "--seeds", "0", "1", "--epochs", "2"]
STUDY = re.compile(r"^study: ([\d,]+) trials, ([\d.e+-]+|[\d,]+) GPU-hours", re.MULTILINE)


@pytest.fixture(autouse=True)
def no_peak_from_the_environment(monkeypatch):
    monkeypatch.delenv(PEAK_TFLOPS_ENV, raising=False)


def dry_run(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert cli.main([*argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def estimate_rows(out: str) -> list[dict[str, str]]:
    """The estimate's table: one dict per cell kind, keyed by the header's columns."""
    lines = out[out.index("cost estimate:"):].splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["family", "size"])
    names = lines[head].split()
    rows = lines[head + 1:lines.index("", head)]
    return [dict(zip(names, row.split(), strict=True)) for row in rows]


def study(out: str) -> tuple[int, float]:
    """(trials, GPU-hours) of the study line."""
    trials, hours = STUDY.search(out).groups()
    return int(trials.replace(",", "")), float(hours.replace(",", ""))


def trial(family="opt", size="125m", layers=(11,), task="digits-convstem",
          control="pretrained", **hp) -> TrialSpec:
    return TrialSpec(family, size, layers, task, control, 0, Hyperparameters(**hp))


# --- what the dry run prints ---------------------------------------------------------------


def test_the_dry_run_prints_the_estimate_after_the_plan(capsys):
    out = dry_run(capsys, *SMALL)
    assert out.index("per size:") < out.index("cost estimate: analytic") < out.index("study:")
    assert "(not measured" in out
    h100 = PEAK_BF16_FLOPS["H100"] / 1e12
    assert f"H100 SXM (default), dense bf16 peak {h100:g} TFLOP/s" in out
    assert f"assumed {ASSUMED_MFU:.0%} MFU" in out
    assert "on 80 GB GPUs (--gpu-memory-gb)" in out
    rows = estimate_rows(out)
    assert [(r["family"], r["size"], r["control"], r["trials"]) for r in rows] == [
        ("-", "-", "none", "2"), ("opt", "125m", "pretrained", "2"),
        ("opt", "1.3b", "pretrained", "2")]
    for r in rows:  # 2 epochs of digits' training set; small blocks: 8 trials per GPU
        assert r["samples"] == f"{2 * CATALOG['digits-convstem'].cost.train_samples:,}"
        assert (r["gpu_share"], r["per_gpu"]) == ("0.125", "8")
        assert float(r["gpu_h"]) == pytest.approx(2 * float(r["gpu_h_per_trial"]), rel=0.01)
    trials, hours = study(out)
    assert trials == 6
    assert hours == pytest.approx(sum(float(r["gpu_h"]) for r in rows), rel=0.01)
    assert re.search(r"wall clock at best .* on 1 GPU, .* on 8 GPUs, .* on 64 GPUs", out)
    # every distinct layer once: each size's last layer, in fp16
    opt = get_family("opt")
    distinct = 2 * (opt.layer_params("125m") + opt.layer_params("1.3b"))
    from orchestrator.plan import human_bytes

    assert (f"weights per node: at most {human_bytes(distinct)}, every distinct layer" in out)
    assert f"the largest single trial reads {human_bytes(2 * opt.layer_params('1.3b'))}" in out


def test_hours_scale_linearly_with_epochs_and_seeds(capsys):
    base = study(dry_run(capsys, *SMALL))
    epochs = study(dry_run(capsys, *SMALL, "--epochs", "6"))
    seeds = study(dry_run(capsys, *SMALL, "--seeds", "0", "1", "2", "3", "4", "5"))
    assert epochs[0] == base[0] and epochs[1] == pytest.approx(3 * base[1], rel=0.01)
    assert seeds[0] == 3 * base[0] and seeds[1] == pytest.approx(3 * base[1], rel=0.01)
    one, four = trial(epochs=1), trial(epochs=4)
    assert trial_cost(four).flops == pytest.approx(4 * trial_cost(one).flops)
    with_ema = trial_cost(trial(epochs=1, ema_decay=0.99))  # the EMA is validated as well
    assert with_ema.flops > trial_cost(one).flops


def test_a_bigger_lm_costs_more(capsys):
    rows = {r["size"]: r for r in estimate_rows(dry_run(capsys, *SMALL))}
    assert float(rows["1.3b"]["gpu_h_per_trial"]) > 4 * float(rows["125m"]["gpu_h_per_trial"])
    assert float(rows["125m"]["gpu_h_per_trial"]) > float(rows["-"]["gpu_h_per_trial"])
    for family in list_families():  # every size of every family: more parameters, more FLOPs
        fam = get_family(family)
        sizes = sorted(fam.sizes, key=lambda s: (fam.layer_params(s), fam.size(s).hidden_size))
        cost = {s: trial_cost(trial(family, s, (0,))).flops for s in sizes}
        for a, b in itertools.pairwise(sizes):
            assert cost[b] >= cost[a], (family, a, b)
            if fam.layer_params(b) > fam.layer_params(a):
                assert cost[b] > cost[a], (family, a, b)
    span = trial_cost(trial(layers=(4, 5, 6)))  # a 3-layer span: about 3 layers' block FLOPs
    assert span.flops > 2.5 * trial_cost(trial(layers=(4,))).flops


def test_peak_tflops_sets_the_gpu_and_scales_the_hours(capsys, monkeypatch):
    h100 = PEAK_BF16_FLOPS["H100"] / 1e12
    base = study(dry_run(capsys, *SMALL))[1]
    half = dry_run(capsys, *SMALL, "--peak-tflops", f"{h100 / 2:g}")
    assert f"--peak-tflops {h100 / 2:g}, dense bf16 peak {h100 / 2:g} TFLOP/s" in half
    assert study(half)[1] == pytest.approx(2 * base, rel=0.01)
    double = study(dry_run(capsys, *SMALL, "--peak-tflops", f"{2 * h100:g}"))[1]
    assert double == pytest.approx(base / 2, rel=0.01)
    monkeypatch.setenv(PEAK_TFLOPS_ENV, f"{h100 / 4:g}")  # the trials' own override, too
    env = dry_run(capsys, *SMALL)
    assert f"{PEAK_TFLOPS_ENV}={h100 / 4:g}" in env
    assert study(env)[1] == pytest.approx(4 * base, rel=0.01)
    for bad, says in (("fast", "expected the peak in TFLOP/s"), ("-3", "must be positive")):
        monkeypatch.setenv(PEAK_TFLOPS_ENV, bad)
        assert cli.main([*SMALL, "--dry-run"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and PEAK_TFLOPS_ENV in err and says in err


def test_controls_without_an_lm_block_cost_the_encoder_only(capsys):
    task = CATALOG["digits-convstem"].cost
    rows = estimate_rows(dry_run(capsys, *SMALL))
    none = next(r for r in rows if r["control"] == "none")
    assert float(none["train_gflops"]) == pytest.approx(3 * task.encoder_gflops, rel=0.01)
    assert trial_cost(trial("", "", (), control="none")).step == encoder_cost(task)
    # the adapters and the MLP: two width <-> hidden linears, whatever the LM's depth
    for control in ("adapters", "mlp"):
        small = trial_cost(trial("opt", "125m", (), control=control)).step
        linears = 2 * 2 * task.width * get_family("opt").size("125m").hidden_size * task.tokens
        assert small.forward == pytest.approx(encoder_cost(task).forward + linears)
        assert small.train_step == pytest.approx(encoder_cost(task).train_step + 3 * linears)


def test_shares_follow_the_gpu_flags_and_the_search_scales_the_total(capsys):
    big = ["--family", "opt", "--sizes", "66b", "--layers", "last", "--controls",
           "random-trained", "--seeds", "0"]
    share = {m: estimate_rows(dry_run(capsys, *big, "--gpu-memory-gb", m))[0]["gpu_share"]
             for m in ("24", "80")}
    assert float(share["24"]) > float(share["80"]) > 0.125
    given = estimate_rows(dry_run(capsys, *SMALL, "--gpus-per-trial", "0.5"))
    assert {(r["gpu_share"], r["per_gpu"]) for r in given} == {("0.5", "2")}
    base = study(dry_run(capsys, *SMALL))
    per_cell = dry_run(capsys, *SMALL, "--search-hparams", "per-cell", "--samples-per-cell", "3")
    assert "per-cell: 3 trials per plan row" in per_cell
    assert study(per_cell)[0] == 3 * base[0]
    assert study(per_cell)[1] == pytest.approx(3 * base[1], rel=0.01)
    optuna = dry_run(capsys, *SMALL, "--search", "optuna", "--num-samples", "12",
                     "--scheduler", "asha")
    assert study(optuna)[0] == 12 and "upper bound" in optuna
    assert study(optuna)[1] == pytest.approx(2 * base[1], rel=0.01)


def test_the_trials_not_yet_finished_are_costed_apart(capsys, tmp_path, monkeypatch):
    from orchestrator.options import build_parser
    from orchestrator.plan import build_plan

    plan = build_plan(cli.spec_from_args(build_parser().parse_args(SMALL)))
    status = {plan[0].key: "finished", plan[1].key: "failed"}  # the no-block trials
    monkeypatch.setattr("orchestrator.store.cell_status", lambda uri, experiment: status)
    (tmp_path / "m.db").touch()
    out = dry_run(capsys, *SMALL, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    none = next(r for r in estimate_rows(out) if r["control"] == "none")
    todo = re.search(r"not yet finished: 5 trials, ([\d.e+-]+) GPU-hours", out)
    assert float(todo.group(1)) == pytest.approx(
        study(out)[1] - float(none["gpu_h_per_trial"]), rel=0.01)


def test_the_estimate_is_linear_in_the_plan(monkeypatch):
    """Costs and shares are computed once per cell kind, not per trial: a 20,000-trial plan
    costs a handful of model evaluations (``bench/cli_latency.py`` times the dry run)."""
    from orchestrator import estimate
    from orchestrator.estimate import Assumptions, estimate_lines
    from orchestrator.options import build_parser
    from orchestrator.plan import build_plan

    args = build_parser().parse_args(
        ["--family", "opt", "--sizes", "all", "--layers", "all", "--controls", "pretrained",
         "random", "--seeds", *map(str, range(10)), "--tasks", "digits", "digits-convstem",
         "shapes3d", "moving-digits", "shape-vqa", "shape-scenes-3d", "imagenet-vit-tiny"])
    plan = build_plan(cli.spec_from_args(args))
    assert len(plan) > 19_000
    calls = []
    real_share = estimate.gpu_share
    monkeypatch.setattr(estimate, "gpu_share", lambda t, m: calls.append(t) or real_share(t, m))
    cost_model._trial_cost.cache_clear()
    lines = estimate_lines(plan, Assumptions(assumed_gpu()))
    kinds = {(t.family, t.size, t.task, t.control) for t in plan}
    assert len(calls) == cost_model._trial_cost.cache_info().misses == len(kinds)
    assert f"study: {len(plan):,} trials" in "\n".join(lines)


def test_a_task_without_a_cost_row_is_named_not_guessed(monkeypatch):
    from dataclasses import replace

    from experiments.tasks import catalog
    from orchestrator.estimate import Assumptions, estimate_lines

    monkeypatch.setitem(catalog.CATALOG, "digits", replace(catalog.CATALOG["digits"], cost=None))
    cost_model._trial_cost.cache_clear()
    plan = [trial(task="digits"), trial()]
    try:
        out = "\n".join(estimate_lines(plan, Assumptions(assumed_gpu())))
    finally:
        cost_model._trial_cost.cache_clear()
    assert trial_cost(plan[1]) is not None
    assert "1 trials not estimated: their tasks have no cost row" in out


def test_a_cost_row_whose_width_is_not_the_task_s_is_refused(monkeypatch):
    import dataclasses

    from experiments.tasks import registry

    task = registry.get_task("digits")
    monkeypatch.setattr(registry, "_TASKS", {})
    with pytest.raises(ValueError, match="visual_dim 32, but its catalog cost row has width 64"):
        registry.register_task(dataclasses.replace(task, visual_dim=32))


# --- the numbers are the models' own ---------------------------------------------------------


def _embedded_inputs(task: str, n: int):
    """Inputs of an embedded task's shapes, from its dataset's constants (no data generated:
    ``test_embedded_inputs_have_the_datas_shapes`` checks them against the real examples)."""
    import torch

    from experiments.datasets import (
        moving_digits,
        point_shapes,
        polylines,
        road_graphs,
        rooms3d,
        shape_captions,
        shape_scenes,
        shape_vqa,
    )
    from experiments.tasks import examples

    vocab, answers = 20, 5  # ids and targets: neither changes a FLOP
    return {
        "digits": lambda: torch.rand(n, 1, 8, 8),
        "digits-convstem": lambda: torch.rand(n, 1, 8, 8),
        "shapes3d": lambda: examples.random_clouds(point_shapes.POINTS, 6)(n)[0],
        "moving-digits": lambda: torch.rand(n, 1, moving_digits.FRAMES, moving_digits.CANVAS,
                                            moving_digits.CANVAS),
        "road-graphs": lambda: examples.random_scenes(
            road_graphs.ROAD_POLYLINES, polylines.MAX_VECTORS, polylines.FUTURE)(n)[0],
        "shape-vqa": lambda: examples.random_answered_images(
            shape_scenes.SIZE, vocab, shape_vqa.QUESTION_LEN, answers)(n)[0],
        "shape-retrieval": lambda: examples.random_captioned_images(
            shape_scenes.SIZE, vocab, shape_captions.CAPTION_LEN)(n)[0],
        "shape-scenes-3d": lambda: examples.random_answered_clouds(
            rooms3d.POINTS, vocab, rooms3d.QUESTION_LEN, answers)(n)[0],
    }[task]()


def _inputs(task: str, n: int):
    from experiments.tasks.registry import get_task

    if CATALOG[task].embedded:
        return _embedded_inputs(task, n)
    return get_task(task).example(n)[0]  # random inputs of the real dataset's shapes


def _shapes(x) -> list[tuple[int, ...]]:
    return [tuple(x.shape)] if hasattr(x, "shape") else [tuple(v.shape) for v in x]


def test_every_task_but_those_whose_encoder_a_sweep_chooses_has_a_cost_row():
    """The ``images`` task's model is whatever ``--encoder`` names: it has no row to check
    (the dry run shows no estimate for it); every other task has one."""
    missing = {name for name in list_tasks() if CATALOG[name].cost is None}
    assert missing == {n for n in list_tasks() if CATALOG[n].chooses_encoder}
    assert missing == {"images"}


@pytest.mark.parametrize("task", [n for n in list_tasks() if CATALOG[n].cost is not None])
def test_the_catalog_s_model_numbers_are_the_task_model_s(task):
    """Forward GFLOPs without a block (FlopCounterMode, meta device), the sequences the
    block runs over (a probe in its place) and the width, against the catalog's row."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from encoders.visual.vit import insert_after_last_block
    from experiments.batches import forward
    from experiments.cost import _CPU_ATTENTION
    from experiments.tasks.registry import get_task

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lengths: list[int] = []

        def forward(self, x, *args, **kwargs):
            self.lengths.append(x.shape[1])  # (B, T, width)
            assert x.shape[2] == row.width
            return x

    row, built, n = CATALOG[task].cost, get_task(task), 2
    x = _meta(_inputs(task, n))
    probe = Probe()
    with torch.device("meta"):
        model = built.build_model(None).eval()
        probed = insert_after_last_block(built.build_model(None), probe).eval()
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        forward(model, x)
    forward(probed, x)
    assert counter.get_total_flops() / n / 1e9 == pytest.approx(row.encoder_gflops, rel=0.01)
    assert tuple(probe.lengths) == row.sequences
    assert row.width == built.visual_dim


def _block(family: str, size: str, layers: tuple[int, ...], control: str, width: int):
    """The control's inserted module; a pretrained one as the random block of its shape
    (the same layers: only the weights differ, which no FLOP depends on)."""
    from encoders.lm.block_factory import BlockRequest, random_block
    from encoders.lm.controls import build_block

    arm = get_control(control)
    if arm.weights_source == "pretrained":
        return random_block(BlockRequest(family, size, layers, 0, width,
                                         trainable=arm.trains_lm))[0]
    return build_block(family=family, size=size, layers=layers, control=control, seed=0,
                       visual_dim=width)[0]


def _meta(x):
    return x.to("meta") if hasattr(x, "to") else tuple(v.to("meta") for v in x)


def _count(model, x, loss, device: str = "meta") -> tuple[float, float]:
    """FLOPs per sample of a forward and a training step, as a trial counts them
    (``experiments.cost.count_flops``); on the meta device (shapes only) unless the
    attention kernels matter: there SDPA's backward is counted as its math decomposition
    (2x the forward), where CPU and CUDA kernels recompute the scores (2.5x, as trials
    measure it)."""
    from experiments.cost import count_flops

    x = _meta(x) if device == "meta" else x
    flops = count_flops(model, x, None, lambda out, _: loss(out))
    return flops.forward_per_sample, flops.train_step_per_sample


@pytest.mark.parametrize(("family", "size", "sequences", "trains"), [
    ("minilm", "l6", (512,), False),  # attention a fifth of the layer's FLOPs
    ("minilm", "l6", (512,), True),
    ("minilm", "l6", (40, 300), False),  # two streams through one block (the dual encoders)
    ("qwen2", "0.5b", (96,), False),  # grouped-query attention, rotary
])
def test_the_lm_block_formula_is_flop_counter_s(family, size, sequences, trains):
    """The inserted LM block alone, frozen and trained, against FlopCounterMode on CPU (the
    attention kernels a trial's count sees): its input requires grad (the encoder below
    trains), so a frozen block still runs a backward."""
    import torch

    control = "random-trained" if trains else "random"
    width = 64
    block = _block(family, size, (0,), control, width)
    xs = [torch.randn(1, t, width, requires_grad=True) for t in sequences]

    class Streams(torch.nn.Module):  # each sequence through the same block, as DualEncoder
        def __init__(self) -> None:
            super().__init__()
            self.block = block

        def forward(self, *streams):
            return sum(self.block(s).sum() for s in streams)

    forward, step = _count(Streams(), tuple(xs), lambda out: out, device="cpu")
    want = inserted_cost(family, size, 1, control, width, sequences)
    assert forward == pytest.approx(want.forward, rel=0.02)
    assert step == pytest.approx(want.train_step, rel=0.02)


@pytest.mark.parametrize("control", list_controls())
def test_every_control_s_trial_cost_is_flop_counter_s(control):
    """The whole trial's FLOPs per sample (encoder + inserted module, forward and training
    step) against FlopCounterMode on the task's real model, for every registered control:
    a new control whose module the formulas miss fails here."""
    import torch
    from torch.nn import functional

    from experiments.tasks.registry import get_task

    task, n = get_task("digits-convstem"), 2
    layers = () if get_control(control).layers == "none" else (5,)
    t = trial("minilm", "l6", layers, control=control)
    if not get_control(control).per_lm:
        t = trial("", "", (), control=control)
    with torch.device("meta"):
        block = (_block("minilm", "l6", layers, control, task.visual_dim)
                 if get_control(control).per_lm else None)
        model = task.build_model(block)
        y = torch.randint(0, 10, (n,))
    forward, step = _count(model, _inputs(task.name, n),
                           lambda out: functional.cross_entropy(out, y))
    want = trial_cost(t).step
    assert forward == pytest.approx(want.forward, rel=0.03)
    assert step == pytest.approx(want.train_step, rel=0.03)


def test_assumed_gpu_names_what_it_assumes(monkeypatch):
    assert assumed_gpu().peak_flops == PEAK_BF16_FLOPS["H100"]
    assert assumed_gpu(500).name == "--peak-tflops 500"
    assert assumed_gpu(500).flops_per_s == pytest.approx(500e12 * ASSUMED_MFU)
    monkeypatch.setenv(PEAK_TFLOPS_ENV, "250")
    assert assumed_gpu().peak_flops == 250e12
    assert assumed_gpu(100).peak_flops == 100e12  # the flag wins
    assert math.isclose(trial_cost(trial()).gpu_hours(assumed_gpu(100)),
                        2 * trial_cost(trial()).gpu_hours(assumed_gpu(200)))


# --- slow: the real data ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("task", [name for name, row in CATALOG.items() if row.embedded])
def test_embedded_rows_match_their_data(task):
    """The embedded tasks' sample counts are their datasets' (the retrieval task validates
    each distinct image once), and the fast tests' stand-in inputs have the data's shapes."""
    from experiments.tasks.registry import get_task

    built = get_task(task)
    train, val = built.build_data()
    row = CATALOG[task].cost
    assert len(train) == row.train_samples
    assert (len(val.distinct_images()) if hasattr(val, "distinct_images")
            else len(val)) == row.val_samples
    assert _shapes(built.example(2)[0]) == _shapes(_embedded_inputs(task, 2))


def test_the_deit_preset_names_the_micro_batch_of_the_7b_layer_per_gpu(capsys):
    """DeiT's global batch of 1024 with LLaMA-7B's last layer: the step the memory model
    sizes fits an 80 GB GPU whole; a 40 GB one takes it as 2 micro-batches of 512, a 24 GB
    one in more; a given micro-batch is what the table says."""
    def block_row(*flags):
        rows = estimate_rows(dry_run(capsys, "--preset", "imagenet_deit", *flags))
        return next(r for r in rows if r["control"] == "pretrained")

    assert (block_row()["micro_batch"], block_row()["k"]) == ("1024", "1")
    forty = block_row("--gpu-memory-gb", "40")
    assert (forty["micro_batch"], forty["k"], forty["gpu_share"]) == ("512", "2", "1")
    small = block_row("--gpu-memory-gb", "24")
    assert int(small["micro_batch"]) < 512 and int(small["k"]) * int(small["micro_batch"]) == 1024
    assert (block_row("--micro-batch", "128")["micro_batch"],
            block_row("--micro-batch", "128")["k"]) == ("128", "8")


def test_n_gpu_trials_split_the_batch_and_shorten_the_study(capsys):
    """--gpus-per-trial 8: each GPU's micro-batch is planned for its eighth of the batch, and
    the wall clock counts 8-GPU trials: the longest trial's GPU-hours over 8 GPUs, none on
    fewer than 8 GPUs."""
    one = dry_run(capsys, "--preset", "imagenet_deit")
    eight = dry_run(capsys, "--preset", "imagenet_deit", "--gpus-per-trial", "8")
    row = next(r for r in estimate_rows(eight) if r["control"] == "pretrained")
    assert (row["micro_batch"], row["k"], row["gpu_share"]) == ("128", "1", "8")
    assert STUDY.search(one).groups() == STUDY.search(eight).groups()  # the same GPU-hours
    walls = re.compile(r"wall clock at best (.+) on 1 GPU, ([\d.]+) h on 8 GPUs, ([\d.]+) h "
                       r"on 64 GPUs \(no sooner than its longest trial, ([\d.]+) h")
    w1, w8, w64, longest1 = walls.search(one).groups()
    x1, x8, x64, longest8 = walls.search(eight).groups()
    assert x1 == "-" and w1 != "-"  # an 8-GPU trial cannot run on one
    assert float(longest8) == pytest.approx(float(longest1) / 8, rel=0.01)
    assert float(x64) == float(longest8) < float(w64) == float(longest1)
    assert float(x8) < float(w8)
    rows = estimate_rows(dry_run(capsys, "--preset", "imagenet_deit", "--gpus-per-trial", "2",
                                 "--gpu-memory-gb", "24"))
    block = next(r for r in rows if r["control"] == "pretrained")
    assert int(block["micro_batch"]) * int(block["k"]) == 512  # each of 2 GPUs: half of 1024
