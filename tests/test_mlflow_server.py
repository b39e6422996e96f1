"""Sweeps against a real MLflow tracking server on PostgreSQL, with proxied artifacts: the lab
set-up (one server, several people's sweeps at once). Two drivers write at once while the
server goes away mid-sweep and comes back, and lose or duplicate nothing (MLflow's client
retries its HTTP calls with back-off); each report reads back only its own runs.

Skipped, saying why, where PostgreSQL is not installed (Debian's ``postgresql`` package)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.plan import build_plan
from orchestrator.spec import load_spec
from tests.services import MlflowServer, Postgres, free_port, postgres_bin

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["--preset", "smoke", "--controls", "none", "pretrained", "--layers", "last", "--quiet"]


@pytest.fixture(scope="module")
def server():
    pg_bin = postgres_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): the tracking "
                    "server's database cannot be started here")
    pytest.importorskip("psycopg2", reason="psycopg2 (the dev extra) talks to PostgreSQL")
    folder = Path(tempfile.mkdtemp(prefix="lmblocks-pg-"))
    folder.chmod(0o755)  # the postgres user reaches its cluster folder inside
    pg = Postgres(folder / "cluster", free_port(), pg_bin)
    srv = MlflowServer(pg.uri, folder / "artifacts", free_port())
    try:
        pg.start()
        srv.start()
        yield srv
    finally:
        srv.stop()
        pg.stop()
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def sweep(server: MlflowServer, tmp_path: Path, name: str, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, str(ROOT / "sweep.py"), *SWEEP, *extra, "--name", name,
            "--tracking-uri", server.uri, "--storage", str(tmp_path / f"ray-{name}"),
            "--report-dir", str(tmp_path / f"report-{name}")]
    return subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]


def trial_runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`lmblocks.kind` = 'trial'")


def test_two_sweeps_at_once_through_a_server_restart_lose_and_duplicate_nothing(server, tmp_path):
    """The lab's worst afternoon in one run (one set-up, as both properties need the same two
    sweeps): two drivers write to one server at once, and the server goes away while both
    are mid-sweep and comes back on the same address."""
    plans = {n: build_plan(load_spec("smoke").replace(controls=("none", "pretrained"),
                                                      layers=("last",), seeds=seeds,
                                                      epochs=2))
             for n, seeds in (("alice", (0,)), ("bob", (0, 1)))}
    procs = {"alice": sweep(server, tmp_path, "alice", "--epochs", "2"),
             "bob": sweep(server, tmp_path, "bob", "--epochs", "2", "--seeds", "0", "1")}
    client = MlflowClient(server.uri)
    deadline = time.time() + 600
    while time.time() < deadline:  # until a trial of each has logged its first epoch
        logged = []
        for name, proc in procs.items():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            exp = client.get_experiment_by_name(f"lmblocks-{name}")
            logged.append(bool(exp) and any("val_acc" in r.data.metrics
                                            for r in trial_runs(client, exp.name)))
        if all(logged):
            break
        time.sleep(1)
    server.stop()  # the tracking server goes away mid-sweep ...
    time.sleep(8)
    server.start()  # ... and comes back on the same address
    for proc in procs.values():
        finish(proc)
    for name, plan in plans.items():
        runs = trial_runs(client, f"lmblocks-{name}")
        keys = sorted(r.data.tags["lmblocks.trial_key"] for r in runs)
        assert keys == sorted(t.key for t in plan)  # every trial once, no other sweep's
        assert {r.info.status for r in runs} == {"FINISHED"}
        for r in runs:  # every epoch of every trial reached the server
            steps = {m.step for m in client.get_metric_history(r.info.run_id, "val_acc")}
            assert steps == {1, 2}, (name, r.info.run_name, steps)
        # the sweep's report went to the server's proxied artifact store
        [parent] = client.search_runs(
            [client.get_experiment_by_name(f"lmblocks-{name}").experiment_id],
            "tags.`lmblocks.kind` = 'sweep'")
        assert parent.data.metrics["trials_finished"] == len(plan)
        logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
        assert "report/report.html" in logged
        # a report read back from the server holds this sweep's runs only
        out = tmp_path / f"again-{name}"
        report = subprocess.run(
            [sys.executable, "-m", "results.report", f"lmblocks-{name}", "--tracking-uri",
             server.uri, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
            timeout=300, check=False)
        assert report.returncode == 0, report.stderr[-2000:]
        listed = (out / "runs.csv").read_text()
        others = trial_runs(client, f"lmblocks-{'bob' if name == 'alice' else 'alice'}")
        assert all(r.info.run_id in listed for r in runs)
        assert not any(r.info.run_id in listed for r in others)
    assert list(Path(server.artifacts).rglob("report.html"))  # the files are on its disk
    assert os.path.isdir(server.artifacts)
