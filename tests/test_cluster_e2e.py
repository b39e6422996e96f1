"""A sweep on a two-node Ray cluster, simulated on this machine with Ray's own test cluster.

The sweep searches hyperparameters per cell, so this one cluster start also covers that
mode end to end (the slow suite's time is budgeted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from orchestrator.plan import build_plan
from orchestrator.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_per_cell_sweep_on_a_two_node_cluster_uses_both_nodes_and_records_everything(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)  # a second raylet: its own node id and CPU
        cluster.wait_for_nodes()
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        argv = [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke",
                "--controls", "pretrained", "none", "--layers", "last", "--epochs", "2",
                "--search-hparams", "per-cell", "--samples-per-cell", "2", "--quiet",
                "--address", cluster.address, "--tracking-uri", uri,
                "--storage", str(tmp_path / "shared"), "--experiment", "cluster"]
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        nodes = {cluster.head_node.node_id, worker.node_id}
        again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                               check=False)  # every cell has its 2 FINISHED trials
        assert again.returncode == 0 and "nothing to run" in again.stdout, again.stderr[-2000:]
    finally:
        cluster.shutdown()
    plan = build_plan(load_spec("smoke").replace(controls=("pretrained", "none"),
                                                 layers=("last",), epochs=2))
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cluster"],
                              filter_string="tags.`lmblocks.kind` = 'trial'")
    assert sorted(runs["tags.lmblocks.cell_key"]) == sorted(t.key for t in plan for _ in "ab")
    assert (runs["status"] == "FINISHED").all()
    # each trial ran the hyperparameters the per-cell search gave it, and they differ
    assert runs["params.lr"].astype(float).between(1e-4, 1e-2).all()
    assert runs["params.lr"].nunique() == len(runs)
    assert runs["tags.lmblocks.trial_key"].nunique() == len(runs)
    assert "[best of 2]" in (tmp_path / "lmblocks-reports" / "cluster" / "ablation.md").read_text()
    assert set(runs["tags.ray.node_id"]) == nodes  # trials ran on both nodes
    report = (tmp_path / "lmblocks-reports" / "cluster" / "runs.csv").read_text()
    assert all(run_id in report for run_id in runs["run_id"])  # every result reached the report
    # checkpoints of both nodes' trials went to the one shared storage path
    trial_dirs = {p.parent.parent for p in (tmp_path / "shared").rglob("checkpoint_*/*.safetensors")}
    assert len(trial_dirs) == len(runs)
