"""``--epochs auto:MAX``: the claims' plateau rule, defined once (``experiments.plateau``),
stops a trial through Ray Tune's stopper API once it has left chance; the claims name a
cell whose training loss stayed at chance ("did not learn") apart from "not converged".
A sweep with it, end to end: ``tests/test_positions_sweep.py``."""

from __future__ import annotations

import math

import pytest

from experiments.plateau import chance_loss, should_stop, stayed_at_chance
from experiments.trial import Hyperparameters, TrialSpec
from orchestrator.plan import build_plan
from orchestrator.schedulers import PlateauStopper
from orchestrator.spec import SpecError, SweepSpec, parse_epochs, spec_from_dict
from results.claims import evaluate
from tests.test_claims import flat, frame, row, run

LN8 = math.log(8)


def test_the_rule_stops_a_plateau_but_not_a_run_still_at_chance():
    assert chance_loss(1 / 8) == pytest.approx(LN8) and chance_loss(None) is None
    assert stayed_at_chance([2.08, 2.07, 2.079], LN8) is True
    assert stayed_at_chance([2.08, 1.9], LN8) is False
    assert stayed_at_chance([1.0], None) is None
    plateau = [0.3, 0.6, 0.8, 0.8, 0.8]
    assert should_stop(plateau, True, [1.5, 1.0, 0.5, 0.5, 0.5], LN8)
    assert not should_stop(plateau[:3], True)  # still rising
    assert not should_stop([0.125] * 5, True, [2.08] * 5, LN8)  # flat at chance: not learning
    assert should_stop([0.125] * 5, True)  # no chance known: the plateau alone


def test_the_stopper_reads_each_trial_s_history_by_epoch():
    stop = PlateauStopper("val_acc", "max")
    config = {"auto_epochs": True}
    said = [stop("a", {"epoch": e, "val_acc": v, "train_loss": 1.0, "chance_loss": LN8,
                       "config": config})
            for e, v in enumerate([0.3, 0.6, 0.8, 0.8, 0.8], start=1)]
    assert said == [False, False, False, False, True]
    # a retried epoch replaces its first report; another trial has its own history
    assert stop("a", {"epoch": 5, "val_acc": 0.95, "train_loss": 1.0, "config": config}) is False
    assert stop("b", {"epoch": 1, "val_acc": 0.8, "config": config}) is False
    stuck = [stop("c", {"epoch": e, "val_acc": 0.125, "train_loss": 2.08, "chance_loss": LN8,
                        "config": config}) for e in range(1, 8)]
    assert not any(stuck)
    fixed = [stop("d", {"epoch": e, "val_acc": 0.8, "config": {"auto_epochs": False}})
             for e in range(1, 8)]
    assert not any(fixed) and not stop.stop_all()


def test_auto_epochs_parse_key_and_bad_input():
    assert parse_epochs("auto:12") == {"epochs": 12, "auto_epochs": True}
    assert parse_epochs(7) == {"epochs": 7, "auto_epochs": False}
    spec = spec_from_dict({"epochs": "auto:9"})
    assert (spec.hparams.epochs, spec.hparams.auto_epochs) == (9, True)
    with pytest.raises(SpecError, match=r"bad epochs 'auto:'; valid: an integer >= 1, or "
                                        r"auto:MAX"):
        parse_epochs("auto:")
    fixed = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 0, Hyperparameters(epochs=9))
    auto = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", 0,
                     Hyperparameters(epochs=9, auto_epochs=True))
    assert fixed.key != auto.key and TrialSpec.from_config(auto.to_config()) == auto
    assert fixed.key == build_plan(SweepSpec(seeds=(0,), layers=("5",)).replace(
        epochs=9))[0].key  # the fixed-epoch cells keep their key


def test_claims_name_a_cell_that_did_not_learn_apart_from_not_converged():
    rows = [run("none", s, v, train_loss=0.3, chance_loss=LN8)
            for s, v in enumerate([0.69, 0.70, 0.71])]
    rows += [run("pretrained", s, v, "minilm", "l6", "5", train_loss=loss, chance_loss=LN8)
             for s, (v, loss) in enumerate([(0.125, 2.079), (0.125, 2.08), (0.6, 0.9)])]
    df = frame(rows)
    claims = evaluate(df, histories=flat(df))
    r = row(claims, "pretrained > none")
    assert r["verdict"] == "inconclusive"
    assert ("did not learn: pretrained minilm/l6 L5 (digits) (2/3 seeds' training loss "
            "stayed at chance)") in r["reason"]
    assert "not converged" not in r["reason"]
    conv = claims.attrs["convergence"]
    assert list(conv["status"]) == ["converged", "did not learn"]


def test_a_recipe_per_task_in_one_sweep():
    spec = spec_from_dict({"tasks": ["digits", "moving-digits"], "seeds": [0],
                           "controls": ["none"], "lr": 0.001,
                           "task_hparams": {"moving-digits": {"lr": "3e-4", "warmup_epochs": 2,
                                                              "epochs": "auto:12"}}})
    lrs = {t.task: (t.hparams.lr, t.hparams.warmup_epochs, t.hparams.epochs,
                    t.hparams.auto_epochs) for t in build_plan(spec)}
    assert lrs == {"digits": (0.001, 0.0, 12, False), "moving-digits": (3e-4, 2.0, 12, True)}
    only_digits = build_plan(spec.replace(tasks=("digits",)))  # its recipe unused, no error
    assert {t.hparams.lr for t in only_digits} == {0.001}
    for raw, message in [
        ({"digits": {"lrr": 1}}, "task_hparams[digits]: unknown field(s) ['lrr']"),
        ({"digits": 3}, "bad task_hparams"),
    ]:
        with pytest.raises(SpecError) as err:
            spec_from_dict({"task_hparams": raw})
        assert message in str(err.value)
    with pytest.raises(SpecError, match=r"task_hparams: unknown task 'digitz'"):
        build_plan(spec_from_dict({"task_hparams": {"digitz": {"lr": 1e-3}}}))
    with pytest.raises(SpecError, match=r"task_hparams\[digits\]: bad lr -1.0; valid: a "
                                        r"finite number > 0"):
        build_plan(spec_from_dict({"task_hparams": {"digits": {"lr": -1}}}))
