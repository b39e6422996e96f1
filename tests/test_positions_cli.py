"""``--positions`` through the CLI: a bad value is one line, exit 2, before Ray; the dry run
plans, costs and shares a GPU per position, and finds a store's cells from before the axis
finished at ``end`` (a real run skips them)."""

from __future__ import annotations

import pytest

from orchestrator import cli
from tests.test_cli import no_sweep_may_start, run_bad  # noqa: F401  (the CLI tests' guard)
from tests.test_dry_run import record, smoke_plan, status_column


@pytest.mark.parametrize("argv, expected", [
    (["--positions", "top"], ("unknown position 'top'; valid: end, middle, start, an index i "
                             "(after encoder block i, 0-based), -k (k from the end), all")),
    (["--positions", "end", "-1"], ("positions 'end' and '-1' are the same place in task "
                                   "'digits''s encoder (2 of its 2 blocks before it)")),
    (["--positions", "5"], "position '5' is outside the encoder's 2 blocks; valid: 0..1"),
    (["--positions", ","], "empty --positions; valid: one or more values"),
])
def test_a_bad_position_is_one_line_before_anything_starts(capsys, argv, expected):
    err = run_bad(capsys, "--preset", "smoke", *argv)
    assert expected in err


def test_the_dry_run_plans_costs_and_finds_old_cells_per_position(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = smoke_plan()  # recorded before the axis: every cell at the end
    for trial in old:
        record(uri, "lmblocks-smoke", trial.key, "FINISHED")
    capsys.readouterr()
    assert cli.main(["--preset", "smoke", "--dry-run", "--tracking-uri", uri,
                     "--positions", "end", "start"]) == 0
    out = capsys.readouterr().out
    plan = smoke_plan("--positions", "end", "start")
    assert len(plan) == 2 * len(old) - 1  # none inserts nothing: it has no second place
    statuses = status_column(out)
    assert statuses.count("finished") == len(old) and statuses.count("new") == len(old) - 1
    rows = out.splitlines()
    head = next(i for i, line in enumerate(rows) if line.split()[:3] == ["family", "size",
                                                                         "layers"])
    assert rows[head].split()[3] == "position"
    for line in rows[head + 1:head + 1 + len(plan)]:  # the start cells are the new ones
        cols = line.split()
        assert (cols[3] == "start") == (cols[-1] == "new"), line
    # the cost estimate: a row per position of each cell kind, its GPU share beside it
    cost = out[out.index("cost estimate"):].splitlines()
    kinds = [line.split() for line in cost if line.startswith("minilm")]
    assert sorted({(k[2], k[4]) for k in kinds}) == [
        ("end", "pretrained"), ("end", "random"), ("start", "pretrained"), ("start", "random")]
    assert all(float(k[-2]) > 0 for k in kinds)  # gpu_share
    assert f"{len(old) - 1} new" in out


def test_the_dry_run_prints_the_prescreen_ranking_and_plans_only_the_kept(capsys):
    capsys.readouterr()
    assert cli.main(["--preset", "smoke", "--dry-run", "--layers", "0", "5", "--positions",
                     "end", "start", "--controls", "pretrained", "none", "--prescreen",
                     "1"]) == 0
    out = capsys.readouterr().out
    assert "prescreen (--prescreen 1): initial linear CKA" in out
    assert "3 cell(s) screened out (every seed)" in out
    ranking = out[out.index("prescreen (--prescreen 1)"):].splitlines()[2:]
    assert len(ranking) == 4 and sum(" True " in line for line in ranking) == 1
    assert len(status_column(out)) == 2  # none and the one kept cell
    err = run_bad(capsys, "--preset", "smoke", "--dry-run", "--prescreen", "0")
    assert "bad --prescreen 0; valid: an integer >= 1" in err
