"""Two sweeps started at the same moment on a new MLflow SQLite store: without a lock both
race through alembic's migrations (one dies, the file is left half-migrated); with
``open_client`` both open it and write."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from orchestrator.store import open_client
uri, start, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
while time.time() < start:
    time.sleep(0.001)
client = open_client(uri)
print("experiment", client.create_experiment(name))
"""


@pytest.mark.slow
def test_two_processes_create_a_new_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = tmp_path / "open.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    start = str(time.time() + 8)  # both past their imports, then at the same instant
    procs = [subprocess.Popen([sys.executable, str(script), uri, start, name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.startswith("experiment")
    from mlflow.tracking import MlflowClient

    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {"a", "b"} <= names  # the store both wrote to is whole and readable

