"""``--prescreen K``: the initial similarity measured without training is the trial's own
``block_cka_init``; cells are ranked per task and only the top K pretrained cells keep their
trials (every seed), every other control's trials stay."""

from __future__ import annotations

import dataclasses

import pytest

from experiments.prescreen import initial_similarity
from experiments.training import run_trial
from experiments.trial import Hyperparameters, TrialSpec
from orchestrator import prescreen as screen
from orchestrator.plan import build_plan
from orchestrator.spec import SpecError, SweepSpec


@pytest.mark.parametrize("position", ["end", "start"])
def test_the_prescreen_measures_the_model_its_trial_starts_from(position):
    trial = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 3,
                      Hyperparameters(epochs=1, batch_size=256), position=position)
    reports = []
    run_trial(trial, lambda metrics, state: reports.append(metrics), cpus=1)
    assert initial_similarity(trial) == pytest.approx(reports[0]["block_cka_init"], rel=1e-6)
    other = dataclasses.replace(trial, layers=(0,))  # another layer: another number
    assert initial_similarity(other) != pytest.approx(reports[0]["block_cka_init"], rel=1e-3)


def test_only_the_top_k_pretrained_cells_per_task_keep_their_trials(monkeypatch):
    spec = SweepSpec(tasks=("digits", "digits-convstem"), layers=("0", "1", "2"),
                     positions=("end", "start"), controls=("pretrained", "random", "none"),
                     seeds=(0, 1))
    plan = build_plan(spec)
    # a similarity that ranks by layer then place: layer 2 at the end highest in each task
    fake = {("2", "end"): 0.9, ("1", "end"): 0.8, ("2", "start"): 0.7}
    seen = []

    def similarity(trial, weights_dir=None, data_dir=None):
        seen.append((trial.task, trial.layer_label, trial.position, trial.seed))
        return fake.get((trial.layer_label, trial.position), 0.1 * trial.layers[0])

    monkeypatch.setattr("experiments.prescreen.initial_similarity", similarity)
    kept, table = screen.prescreen(plan, 2, None, None)
    assert len(seen) == 2 * 6 and {s[3] for s in seen} == {0}  # each cell once, first seed
    for task in ("digits", "digits-convstem"):
        pre = sorted({(t.layer_label, t.position) for t in kept
                      if t.task == task and t.control == "pretrained"})
        assert pre == [("1", "end"), ("2", "end")]
    assert sum(t.control == "pretrained" for t in kept) == 2 * 2 * 2  # 2 tasks, 2 cells, 2 seeds
    assert [t for t in plan if t.control != "pretrained"] == [
        t for t in kept if t.control != "pretrained"]  # the controls as planned
    rows = table[table["task"] == "digits"].set_index(["layers", "position"])
    assert rows.loc[("2", "end"), "rank"] == 1 and rows.loc[("2", "end"), "kept"]
    assert rows.loc[("2", "start"), "reason"] == (
        "screened out: rank 3 of 6, initial CKA 0.7000 below 0.8000 (rank 2, the last kept)")
    lines = screen.ranking_lines(table, 2)
    assert "8 cell(s) screened out (every seed)" in lines[1]


def test_a_bad_k_is_one_line():
    with pytest.raises(SpecError, match=r"^bad --prescreen 0; valid: an integer >= 1"):
        screen.check_prescreen(0)
    screen.check_prescreen(None)
