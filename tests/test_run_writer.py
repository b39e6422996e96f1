"""The trial logger's writes made by a process beside the driver: the same record as writes
made at once, in order, flushed at Tune's snapshots, failures raised in the driver."""

from __future__ import annotations

import os
import pickle
import signal
import types
from pathlib import Path

import pytest

TRACEBACK = "Traceback (most recent call last):\n  ...\nValueError: the loss is nan\n"


def _scenario(logger, tmp_path) -> None:
    """What a sweep's driver does to its logger: starts, epochs, a retry, a failure, ends."""
    from orchestrator.plan import build_plan
    from orchestrator.spec import SweepSpec

    configs = [c.to_config() for c in build_plan(SweepSpec(controls=("random",), seeds=(0, 1, 2)))]
    error = tmp_path / "error.txt"
    error.write_text(TRACEBACK)
    trials = [types.SimpleNamespace(trial_id=f"t{i}", config=c, last_result=None,
                                    error_file=None) for i, c in enumerate(configs)]
    for trial in trials:
        logger.log_trial_start(trial)
    for epoch in (1, 2):
        for trial in trials:
            result = {"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.1 * epoch,
                      "checkpoint_identity": "random-init:x", "compute_dtype": "float32",
                      "node_id": f"node-{epoch}", "time_this_iter_s": 0.5}
            logger.log_trial_result(epoch, trial, result)
            trial.last_result = result
    trials[1].error_file = str(error)
    logger.on_trial_recover(2, trials, trials[1])  # t1 failed once and is retried
    trials[1].error_file = None
    trials[0].last_result = {**trials[0].last_result, "probe_maps": '{"norm": [1, 2]}'}
    logger.log_trial_end(trials[0])
    logger.log_trial_end(trials[1])
    trials[2].error_file = str(error)
    logger.log_trial_end(trials[2], failed=True)


def _record(uri: str, parent: str, tmp_path) -> list[tuple]:
    """The sweep's child runs as a user sees them, without ids and times."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent}'", order_by=["tags.`lmblocks.tune_trial_id`"])
    out = []
    for run in runs:
        histories = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
                     for k in sorted(run.data.metrics)}
        present = {a.path for folder in (None, "analysis")
                   for a in client.list_artifacts(run.info.run_id, folder)}
        artifacts = {path: Path(client.download_artifacts(
            run.info.run_id, path, str(tmp_path / run.info.run_id))).read_text()
            for path in ("analysis/probe_maps.json", "error.txt") if path in present}
        tags = {k: v for k, v in run.data.tags.items()
                if not k.startswith("mlflow.") or k == "mlflow.runName"}
        out.append((run.info.status, run.data.params, tags, histories, artifacts))
    return out


def _logger(tmp_path, name: str, background: bool):
    from mlflow.tracking import MlflowClient

    from orchestrator.spec import SweepSpec
    from orchestrator.tracking import MlflowTrialLogger, start_parent_run

    uri = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
    (tmp_path / name).mkdir()
    parent = start_parent_run(MlflowClient(uri), "writer", SweepSpec(controls=("random",)), 3)
    return MlflowTrialLogger(uri, "writer", parent, background=background), uri, parent


def test_the_writer_process_leaves_the_record_writes_made_at_once_leave(tmp_path):
    """Params, tags, every epoch's metrics, a retry's count, a failure's error text and the
    probe maps: the same, run for run, whichever way the writes are made; the writes are in
    MLflow once Tune's snapshot asks for the logger's state."""
    inline, inline_uri, inline_parent = _logger(tmp_path, "inline", background=False)
    _scenario(inline, tmp_path)
    background, uri, parent = _logger(tmp_path, "background", background=True)
    _scenario(background, tmp_path)
    state = background.get_state()  # Tune's snapshot: the queued writes are made first
    try:
        assert sorted(state["runs"]) == ["t0", "t1", "t2"]
        expected = _record(inline_uri, inline_parent, tmp_path / "a")
        assert [r[0] for r in expected] == ["FINISHED", "FINISHED", "FAILED"]
        assert expected[1][2]["retries"] == "1" and expected[2][4]["error.txt"] == TRACEBACK
        assert _record(uri, parent, tmp_path / "b") == expected
    finally:
        background.close()


def test_writes_land_in_the_order_they_were_made(tmp_path):
    """One queue, one writer: the last of 300 writes of one tag is the value left, and a
    run's end (made after its metrics) is the last word on its status."""
    from mlflow.tracking import MlflowClient

    from orchestrator.run_writer import ProcessWriter

    _, uri, parent = _logger(tmp_path, "order", background=False)
    client = MlflowClient(uri)
    run_id = client.create_run(client.get_run(parent).info.experiment_id).info.run_id
    writer = ProcessWriter(uri)
    try:
        for i in range(300):
            writer.submit("set_tag", parent, "n", str(i))
        writer.submit("set_terminated", run_id, "KILLED")
        writer.submit("set_terminated", run_id, "FINISHED")
        writer.flush()
        assert client.get_run(parent).data.tags["n"] == "299"
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        writer.close()


def test_a_failed_write_is_raised_in_the_driver_at_the_flush_and_at_every_later_one(tmp_path):
    """A write that fails in the writer (here a run that does not exist) names the call; the
    writes after it are still made, and the failure is not forgotten by the next flush."""
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    from orchestrator.run_writer import MlflowWriteError, ProcessWriter

    _, uri, parent = _logger(tmp_path, "fail", background=False)
    writer = ProcessWriter(uri)
    try:
        writer.submit("log_batch", "no-such-run", tags=[RunTag("a", "b")])
        writer.submit("set_tag", parent, "after", "made")
        with pytest.raises(MlflowWriteError, match=r"MlflowClient.log_batch\('no-such-run'"):
            writer.flush()
        assert MlflowClient(uri).get_run(parent).data.tags["after"] == "made"
        with pytest.raises(MlflowWriteError, match="no-such-run"):
            writer.flush()
    finally:
        with pytest.raises(MlflowWriteError):
            writer.close()
    assert not writer._proc.is_alive()


def test_a_dead_writer_is_reported_not_waited_for(tmp_path):
    from orchestrator.run_writer import MlflowWriteError, ProcessWriter

    _, uri, parent = _logger(tmp_path, "dead", background=False)
    writer = ProcessWriter(uri)
    writer.submit("set_tag", parent, "a", "b")
    writer.flush()
    os.kill(writer._proc.pid, signal.SIGKILL)
    writer._proc.join(10)
    with pytest.raises(MlflowWriteError, match=r"writer process exited \(code -9\).*--resume"):
        writer.submit("set_tag", parent, "c", "d")


def test_ctrl_c_does_not_stop_the_writer_before_the_driver_flushes(tmp_path):
    """Ctrl-C reaches the whole process group; Tune stops the sweep in order and the
    logger's last flush still finds its writer."""
    from mlflow.tracking import MlflowClient

    from orchestrator.run_writer import ProcessWriter

    _, uri, parent = _logger(tmp_path, "sigint", background=False)
    writer = ProcessWriter(uri)
    writer.submit("set_tag", parent, "a", "b")
    writer.flush()  # the process has set up its signal handling
    os.kill(writer._proc.pid, signal.SIGINT)
    writer.submit("set_tag", parent, "after", "interrupt")
    writer.close()
    assert writer._proc.exitcode == 0
    assert MlflowClient(uri).get_run(parent).data.tags["after"] == "interrupt"


def test_a_logger_with_a_writer_pickles_and_the_copy_starts_its_own(tmp_path):
    """Tune pickles its callbacks with the experiment (``--resume`` unpickles them): the
    writer process is not pickled; the unpickled logger starts one at its first write."""
    from mlflow.tracking import MlflowClient

    logger, uri, parent = _logger(tmp_path, "pickle", background=True)
    logger.writer.submit("set_tag", parent, "a", "b")
    copy = pickle.loads(pickle.dumps(logger))
    try:
        assert copy._writer is None
        copy.writer.submit("set_tag", parent, "c", "d")
        copy.flush()
        assert copy.writer is not logger.writer
        logger.flush()
        assert {"a", "c"} <= set(MlflowClient(uri).get_run(parent).data.tags)
    finally:
        logger.close()
        copy.close()
