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
