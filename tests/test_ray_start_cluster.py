"""A sweep on a real multi-process Ray cluster: a head from ``ray start --head`` and a second
node from ``ray start --address``, each its own processes and temp dir, as on a lab's hosts.
The trials run on both nodes; the worker node is then killed mid-sweep, and its trials are
retried on the head from their checkpoints: every cell ends FINISHED exactly once. The test
stops exactly the processes it started (found by each node's temp dir), never ``ray stop``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.plan import build_plan
from orchestrator.spec import load_spec
from orchestrator.store import open_client
from tests.services import CLUSTER_ENV, RayNode, free_port, processes_mentioning

ROOT = Path(__file__).resolve().parents[1]


def node_ids(address: str) -> dict[str, str]:
    """Node id per node temp dir, read from the cluster itself (a short-lived driver)."""
    code = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
            "print(json.dumps({n['NodeID']: n['ObjectStoreSocketName'] for n in ray.nodes() "
            "if n['Alive']})); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, env={**os.environ, **CLUSTER_ENV}).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_sweep_on_a_ray_start_cluster_survives_losing_its_worker_node(tmp_path):
    port = free_port()
    head = RayNode(Path(tempfile.mkdtemp(prefix="lmb-head-")), port, head=True)
    worker = RayNode(Path(tempfile.mkdtemp(prefix="lmb-node-")), port, head=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        head.start()
        worker.start()
        sockets = node_ids(head.address)
        ids = {str(n.temp_dir): next(i for i, s in sockets.items() if s.startswith(str(n.temp_dir)))
               for n in (head, worker)}
        head_id, worker_id = ids[str(head.temp_dir)], ids[str(worker.temp_dir)]
        argv = [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--controls",
                "none", "pretrained", "--layers", "last", "--seeds", "0", "1", "--epochs", "4",
                "--quiet", "--address", head.address, "--tracking-uri", uri,
                "--storage", str(tmp_path / "shared"), "--experiment", "ray-start",
                "--max-failures", "3"]
        driver = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, **CLUSTER_ENV})
        deadline = time.time() + 600
        client = None
        while time.time() < deadline:  # until a trial on the worker node has an epoch done
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            if (tmp_path / "mlflow.db").exists():
                client = client or open_client(uri)  # under the driver's lock: no schema race
                exp = client.get_experiment_by_name("ray-start")
                runs = client.search_runs([exp.experiment_id]) if exp else []
                if any(r.data.tags.get("ray.node_id") == worker_id and "val_acc" in r.data.metrics
                       and r.info.status == "RUNNING" for r in runs):
                    break
            time.sleep(1)
        else:
            pytest.fail("no trial reached an epoch on the worker node")
        killed = processes_mentioning(str(worker.temp_dir))
        assert killed
        worker.stop()  # the worker node dies mid-trial: raylet, its trial workers, agents
        out, err = driver.communicate(timeout=900)
        assert driver.returncode == 0, out[-2000:] + err[-3000:]
    finally:
        worker.stop()
        head.stop()
    assert processes_mentioning(str(head.temp_dir)) == []  # nothing of ours left running
    plan = build_plan(load_spec("smoke").replace(controls=("none", "pretrained"),
                                                 layers=("last",), seeds=(0, 1), epochs=4))
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("ray-start").experiment_id],
        "tags.`lmblocks.kind` = 'trial'")
    finished = Counter(r.data.tags["lmblocks.trial_key"] for r in runs
                       if r.info.status == "FINISHED")
    assert finished == Counter({t.key: 1 for t in plan})  # every cell once
    assert all(r.info.status == "FINISHED" for r in runs)  # a retried trial keeps its run
    # trials ran on both nodes; the one cut off on the worker was retried (on the head)
    assert head_id in {r.data.tags.get("ray.node_id") for r in runs}
    retried = [r for r in runs if int(r.data.tags.get("retries", "0")) >= 1]
    assert retried and all(r.data.tags["ray.node_id"] == head_id for r in retried)
