"""The progress line: counts, best so far with its cell, ETA from finished trials."""

from __future__ import annotations

import io
from types import SimpleNamespace

from experiments.trial import TrialSpec
from orchestrator.progress import ProgressLine


def trial(tid, status, seed=0):
    cfg = TrialSpec("minilm", "l6", (5,), "digits", "pretrained", seed).to_config()
    return SimpleNamespace(trial_id=tid, status=status, config=cfg)


def test_progress_line_counts_best_and_eta():
    out = io.StringIO()
    p = ProgressLine(total=5, metric="val_acc", mode="max", every_s=0, out=out)
    a, b, c = trial("a", "RUNNING"), trial("b", "RUNNING", 1), trial("c", "ERROR")
    for t in (a, b):
        p.on_trial_start(0, [a, b], t)
    p.on_trial_result(0, [a, b], a, {"val_acc": 0.5})
    p.on_trial_result(0, [a, b], b, {"val_acc": 0.7})
    p.on_trial_result(0, [a, b], a, {"val_acc": 0.6})
    p.started["a"] -= 60  # a ran for a minute
    a.status = "TERMINATED"
    p.on_trial_complete(0, [a, b, c], a)
    line = out.getvalue().strip().splitlines()[-1]
    assert line.startswith("[sweep] 1/5 done, 1 running, 2 pending, 1 failed")
    assert "best val_acc 0.7000 (minilm-l6-L5-pretrained-digits-s1)" in line
    assert "ETA 2m30s" in line  # 60 s x (2 pending + 1 running / 2) / 1 running
