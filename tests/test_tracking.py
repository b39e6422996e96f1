"""Where MLflow puts a sweep's artifacts."""

from __future__ import annotations


def test_sqlite_artifacts_go_beside_the_database_not_the_working_dir(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import artifact_location, experiment_id

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
             "checkpoint_path": "", "layers_sha256": "", "compute_dtype": "float32"}
    logger.log_trial_result(1, trial, {"epoch": 1, "train_loss": 1.0, **built})
    logger.log_trial_result(2, trial, {"epoch": 2, "train_loss": 0.5, **built,
                                       "checkpoint_identity": "something else"})
    tags = MlflowClient(uri).get_run(logger.runs["t0"]).data.tags
    assert tags["checkpoint.identity"] == built["checkpoint_identity"]
    assert tags["compute_dtype"] == "float32" and "checkpoint.path" not in tags  # empty: unset
