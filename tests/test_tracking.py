"""The MLflow record of a sweep: where artifacts go, what a trial's run holds (cost
included), one MLflow write per Tune callback."""

from __future__ import annotations


def test_sqlite_artifacts_go_beside_the_database_not_the_working_dir(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestrator.store import artifact_location, experiment_id

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    (tmp_path / "db").mkdir()
    client = MlflowClient(uri)
    exp = client.get_experiment(experiment_id(client, "a b/c"))
    assert exp.artifact_location == (tmp_path / "db" / "mlruns" / "a_b_c").as_uri()
    assert artifact_location("http://mlflow:5000", "x") is None


def test_the_run_records_what_the_worker_built_once(tmp_path):
    """The checkpoint identity is the worker's (what it loaded), not a driver-side guess: no
    identity before the first result, then the first result's, kept for the run."""
    import types

    from mlflow.tracking import MlflowClient

    from orchestrator.plan import build_plan
    from orchestrator.spec import SweepSpec
    from orchestrator.tracking import MlflowTrialLogger, start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = SweepSpec(controls=("random",))
    logger = MlflowTrialLogger(uri, "ids", start_parent_run(MlflowClient(uri), "ids", spec, 1))
    trial = types.SimpleNamespace(trial_id="t0", config=build_plan(spec)[0].to_config())
    logger.log_trial_start(trial)
    tags = MlflowClient(uri).get_run(logger.runs["t0"]).data.tags
    assert tags["weights.source"] == "random" and "checkpoint.identity" not in tags
    built = {"checkpoint_identity": "random-init:BertModel._init_weights:x:seed=0",
             "checkpoint_path": "", "layers_sha256": "", "compute_dtype": "float32",
             "checkpoint_quantization": "blk.29: attn_q=Q4_1 attn_norm=F32"}
    logger.log_trial_result(1, trial, {"epoch": 1, "train_loss": 1.0, **built})
    logger.log_trial_result(2, trial, {"epoch": 2, "train_loss": 0.5, **built,
                                       "checkpoint_identity": "something else"})
    tags = MlflowClient(uri).get_run(logger.runs["t0"]).data.tags
    assert tags["checkpoint.identity"] == built["checkpoint_identity"]
    assert tags["compute_dtype"] == "float32" and "checkpoint.path" not in tags  # empty: unset
    assert tags["checkpoint.quantization"] == "blk.29: attn_q=Q4_1 attn_norm=F32"


def _logger_and_trial(tmp_path, name: str):
    import types

    from mlflow.tracking import MlflowClient

    from orchestrator.plan import build_plan
    from orchestrator.spec import SweepSpec
    from orchestrator.tracking import MlflowTrialLogger, start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = SweepSpec(controls=("random",))
    parent = start_parent_run(MlflowClient(uri), name, spec, 1)
    trial = types.SimpleNamespace(trial_id="t0", config=build_plan(spec)[0].to_config(),
                                  last_result=None, error_file=None)
    return MlflowTrialLogger(uri, name, parent), trial, MlflowClient(uri), parent


def _cost_result(epoch: int, **changes) -> dict:
    """A worker's result as experiments/cost.py promises it: every key, some not applying."""
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.5, "lr": 1e-3,
            "frozen_params": 1_774_464, "trainable_params": 52_000,
            "inserted_trainable_params": 49_152, "lm_block_params": "",  # not visual-block
            "visual_block_params": "", "gflops_forward_per_sample": 0.045, "gflops_train_step_per_sample": 0.134,
            "device_name": "cpu", "peak_tflops": "",  # unknown on a CPU: logged "none"
            "samples_per_s": 300.0 + epoch, "step_time_s": 0.1, "data_wait_share": 0.01,
            "peak_memory_bytes": 1.3e9, "achieved_tflops": 0.04, "mfu": None,
            "num_workers": 0, "cpus": 1, "data_parallel": 1, "autocast": "off", "tf32": False,
            "fused_adamw": False, "compile": False, "global_batch": 32, "micro_batch_size": 8,
            "accum_steps": 4, "accumulation_exact": "exact", **changes}


def test_cost_constants_are_params_once_measurements_metrics_settings_tags(tmp_path):
    from experiments.cost import COST_METRICS, COST_PARAMS, RUN_SETTINGS
    from orchestrator.tracking import TRIAL_METRICS

    assert not set(TRIAL_METRICS) & set(COST_PARAMS)  # constants are not metric histories
    logger, trial, client, _ = _logger_and_trial(tmp_path, "cost")
    logger.log_trial_start(trial)
    logger.log_trial_result(1, trial, _cost_result(1))
    # a retry on another machine: the constants stay those of the first result (MLflow
    # refuses to change a param), the settings follow the attempt
    logger.log_trial_result(2, trial, _cost_result(2, device_name="other", cpus=2, tf32=True))
    run_id = logger.runs["t0"]
    data = client.get_run(run_id).data
    assert {k: data.params[k] for k in COST_PARAMS if k in data.params} == {
        "frozen_params": "1774464", "trainable_params": "52000",
        "inserted_trainable_params": "49152", "gflops_forward_per_sample": "0.045",
        "gflops_train_step_per_sample": "0.134", "device_name": "cpu",
        # not applying here: explicit, so every run has the same param keys
        "lm_block_params": "none", "visual_block_params": "none", "peak_tflops": "none"}
    assert "frozen_params" not in data.metrics and "trainable_params" not in data.metrics
    assert set(COST_METRICS) - {"mfu"} <= set(data.metrics) and "mfu" not in data.metrics
    history = client.get_metric_history(run_id, "samples_per_s")
    assert [(m.step, m.value) for m in history] == [(1, 301.0), (2, 302.0)]
    assert {k: data.tags[k] for k in RUN_SETTINGS} == {
        "num_workers": "0", "cpus": "2", "data_parallel": "1", "autocast": "off", "tf32": "True",
        "fused_adamw": "False", "compile": "False", "global_batch": "32",
        "micro_batch_size": "8", "accum_steps": "4", "accumulation_exact": "exact"}


def test_each_callback_is_one_mlflow_write(tmp_path):
    """One ``log_batch`` per result, whatever it carries: with SQLite each write is its own
    transaction, and Tune's driver loop waits for it."""
    logger, trial, client, _ = _logger_and_trial(tmp_path, "writes")
    logger.log_trial_start(trial)
    calls: list[str] = []
    for name in ("log_batch", "log_param", "log_metric", "set_tag", "log_text",
                 "set_terminated"):
        method = getattr(logger.client, name)
        setattr(logger.client, name,
                lambda *a, _n=name, _m=method, **k: (calls.append(_n), _m(*a, **k))[1])
    built = {"checkpoint_identity": "random-init:x", "compute_dtype": "float32",
             "node_id": "n1", "node_ip": "10.0.0.1", "hostname": "h"}
    logger.log_trial_result(1, trial, _cost_result(1, **built))
    logger.log_trial_result(2, trial, _cost_result(2, **built))
    assert calls == ["log_batch", "log_batch"]
    trial.last_result = _cost_result(int(trial.config["epochs"]))  # ran to its end
    logger.log_trial_end(trial)
    assert calls[2:] == ["set_terminated"]
    run = client.get_run(logger.runs["t0"])
    assert run.info.status == "FINISHED" and run.data.tags["ray.node_id"] == "n1"
    assert run.data.tags["checkpoint.identity"] == "random-init:x"


def test_a_resumed_driver_does_not_log_a_run_s_params_twice(tmp_path):
    """After a driver crash Tune restores the logger from its last saved state, which may
    predate writes: the run's params are read back from MLflow, not logged again."""
    from orchestrator.tracking import MlflowTrialLogger

    logger, trial, client, parent = _logger_and_trial(tmp_path, "resume")
    logger.log_trial_start(trial)
    state = logger.get_state()
    logger.log_trial_result(1, trial, _cost_result(1))
    resumed = MlflowTrialLogger(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume", parent)
    resumed.set_state(state)
    resumed.log_trial_result(2, trial, _cost_result(2, device_name="a GPU now", cpus=4))
    data = client.get_run(logger.runs["t0"]).data
    assert data.params["device_name"] == "cpu" and data.tags["cpus"] == "4"


def test_a_trial_that_started_after_the_last_snapshot_keeps_its_one_run(tmp_path):
    """Tune's snapshot may predate a trial's start: the resumed driver restores it as pending
    and starts it again. Its run (the dead driver's) is found by the Tune trial id, not made
    twice; a trial no earlier driver started gets a run of its own."""
    import types

    from orchestrator.tracking import MlflowTrialLogger

    logger, trial, client, parent = _logger_and_trial(tmp_path, "lag")
    state = logger.get_state()  # the snapshot: before the trial started
    logger.log_trial_start(trial)
    logger.log_trial_result(1, trial, _cost_result(1))
    first = logger.runs["t0"]
    resumed = MlflowTrialLogger(f"sqlite:///{tmp_path / 'mlflow.db'}", "lag", parent)
    resumed.set_state(state)
    resumed.log_trial_start(trial)
    other = types.SimpleNamespace(trial_id="t1", config=trial.config, last_result=None,
                                  error_file=None)
    resumed.log_trial_start(other)
    assert resumed.runs["t0"] == first and resumed.runs["t1"] != first
    trial.last_result = _cost_result(int(trial.config["epochs"]))
    resumed.log_trial_end(trial)
    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              "tags.`lmblocks.kind` = 'trial'")
    assert sorted(r.data.tags["lmblocks.tune_trial_id"] for r in runs) == ["t0", "t1"]
    assert client.get_run(first).info.status == "FINISHED"


def test_no_finished_cells_in_a_database_that_does_not_exist_and_it_is_not_created(tmp_path):
    from orchestrator.store import finished_cells

    db = tmp_path / "new" / "mlflow.db"
    assert finished_cells(f"sqlite:///{db}", "default") == {}
    assert not db.exists()
