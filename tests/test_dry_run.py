"""``--dry-run``: the hyperparameters once, each cell's status in the experiment a real run
would use (new / finished / failed), read-only."""

from __future__ import annotations

import socket

from orchestrator import cli
from orchestrator.options import build_parser
from orchestrator.plan import build_plan
from orchestrator.plan_view import hparams_line

# the CLI tests' guard: no sweep may start, a scratch dir, offline (autouse once imported)
from tests.test_cli import no_sweep_may_start  # noqa: F401


def smoke_plan(*argv: str):
    return build_plan(cli.spec_from_args(build_parser().parse_args(["--preset", "smoke", *argv])))


def record(uri: str, experiment: str, key: str, *statuses: str) -> None:
    """Trial runs of one cell, oldest first, tagged as the sweep's logger tags them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    for status in statuses:
        run = client.create_run(exp_id, tags={"lmblocks.kind": "trial",
                                              "lmblocks.trial_key": key, "lmblocks.cell_key": key})
        client.set_terminated(run.info.run_id, status)


def status_column(out: str) -> list[str]:
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["family", "size"])
    assert lines[head].split()[-1] == "status"
    rows = lines[head + 1:lines.index("", head)]
    return [row.split()[-1] for row in rows]


def test_each_cell_s_status_in_the_store(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plan = smoke_plan()
    record(uri, "lmblocks-smoke", plan[1].key, "FAILED", "FINISHED")  # finished after a retry
    record(uri, "lmblocks-smoke", plan[2].key, "FINISHED", "FAILED")  # finished once: finished
    record(uri, "lmblocks-smoke", plan[3].key, "FINISHED")
    record(uri, "lmblocks-smoke", plan[3].key, "FAILED")
    record(uri, "lmblocks-smoke", plan[0].key, "FAILED", "KILLED")  # latest did not fail: new
    record(uri, "other", plan[0].key, "FINISHED")  # another experiment's run: not this one's
    capsys.readouterr()
    assert cli.main(["--preset", "smoke", "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert status_column(out) == ["new", "finished", "finished", "finished"]
    assert "1 new, 3 finished (skipped by a real run unless --force), 0 failed" in out

    record(uri, "mine", plan[1].key, "FINISHED")
    record(uri, "mine", plan[2].key, "FAILED")
    record(uri, "mine", plan[3].key, "RUNNING")
    capsys.readouterr()
    assert cli.main(["--preset", "smoke", "--dry-run", "--tracking-uri", uri,
                     "--experiment", "mine", "--force"]) == 0
    out = capsys.readouterr().out
    assert status_column(out) == ["new", "finished", "failed", "new"]
    assert "2 new, 1 finished (run again: --force), 1 failed" in out


def test_the_status_uses_the_same_store_and_key_as_a_real_run(capsys, tmp_path, monkeypatch):
    """``MLFLOW_TRACKING_URI``, the preset's experiment name, and the key a changed
    hyperparameter changes: a cell finished at 2 epochs is new at 3."""
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    record(uri, "lmblocks-smoke", smoke_plan()[1].key, "FINISHED")
    capsys.readouterr()
    assert cli.main(["--preset", "smoke", "--dry-run"]) == 0
    assert status_column(capsys.readouterr().out) == ["new", "finished", "new", "new"]
    assert cli.main(["--preset", "smoke", "--dry-run", "--epochs", "3"]) == 0
    assert status_column(capsys.readouterr().out) == ["new"] * 4


def test_a_dry_run_creates_no_store(capsys, tmp_path):
    for argv in ([], ["--tracking-uri", f"sqlite:///{tmp_path}/sub/m.db"],
                 ["--tracking-uri", str(tmp_path / "filestore")]):
        assert cli.main(["--preset", "smoke", "--dry-run", *argv]) == 0
        out = capsys.readouterr().out
        assert status_column(out) == ["new"] * 4
        assert "4 new, 0 finished (skipped by a real run unless --force), 0 failed" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, mlruns, lock file
    (tmp_path / "empty.db").write_bytes(b"")  # an empty SQLite file is not given a schema
    assert cli.main(["--preset", "smoke", "--dry-run", "--tracking-uri",
                     f"sqlite:///{tmp_path}/empty.db"]) == 0
    assert (tmp_path / "empty.db").read_bytes() == b""


def test_the_header_names_epochs_lr_batch_schedule_and_warmup(capsys):
    assert cli.main(["--preset", "smoke", "--dry-run", "--epochs", "7", "--lr", "0.0003",
                     "--batch-size", "16", "--schedule", "cosine", "--warmup-epochs", "1"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head == "epochs 7, lr 0.0003, batch size 16, schedule cosine, warm-up 1 epochs"


def test_the_header_shows_each_size_s_effective_lr():
    plan = build_plan(cli.spec_from_args(build_parser().parse_args(
        ["--preset", "imagenet_100ep", "--family", "opt", "--sizes", "125m", "1.3b",
         "--lr", "0.001"])))
    line = hparams_line(plan)
    assert "lr 0.001 (" in line and "0.0002 (opt/125m)" in line
    assert "opt/1.3b" in line.split("0.0002")[0]  # 1.3b is unscaled: listed under 0.001


def test_an_unreachable_store_is_one_status_unknown_line_and_the_plan(capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    assert cli.main(["--preset", "smoke", "--dry-run", "--tracking-uri", uri]) == 0
    captured = capsys.readouterr()
    unknown = [line for line in captured.out.splitlines() if "unknown" in line]
    assert len(unknown) == 1 and uri in unknown[0] and "lmblocks-smoke" in unknown[0]
    assert "4 trials" in captured.out and "status" not in captured.out.split("\n", 2)[1]
    assert "new," not in captured.out
