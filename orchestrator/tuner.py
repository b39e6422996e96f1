"""Run a plan with Ray Tune: Optuna as the search algorithm, MLflow as the record.

Optuna (through Ray Tune's ``OptunaSearch``) drives the trials. In this exhaustive mode
every plan row is enqueued as an Optuna trial (``points_to_evaluate``) and
``num_samples`` equals the plan's length, so each row runs exactly once; smarter search
plugs in here by changing the searcher, not the trainable.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.samplers import TPESampler
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from experiments.tasks.registry import get_task
from orchestrator.plan import TrialSpec
from orchestrator.spec import SweepSpec
from orchestrator.tracking import MlflowTrialLogger, run_name, start_parent_run
from orchestrator.trainable import tune_trial

AXES = ("family", "size", "layers", "task", "control", "seed")


@dataclass
class SweepOutcome:
    experiment: str
    parent_run_id: str
    finished: int
    failed: int
    storage: str
    seconds: float


def trial_resources() -> dict[str, float]:
    """One CPU per trial; one GPU per trial only where the cluster has GPUs.

    Asking for a GPU on a CPU-only cluster would leave every trial PENDING forever.
    """
    gpus = ray.cluster_resources().get("GPU", 0)
    return {"cpu": 1, "gpu": 1 if gpus >= 1 else 0}


def optuna_exhaustive(plan: list[TrialSpec], metric: str, mode: str, seed: int = 0) -> OptunaSearch:
    rows = [{k: v for k, v in t.to_config().items() if k in AXES} for t in plan]
    space = {
        axis: CategoricalDistribution(sorted({row[axis] for row in rows}, key=str)) for axis in AXES
    }
    return OptunaSearch(
        space=space,
        metric=metric,
        mode=mode,
        points_to_evaluate=rows,
        sampler=TPESampler(seed=seed),
    )


def run_sweep(
    spec: SweepSpec,
    plan: list[TrialSpec],
    *,
    identities: dict[tuple[str, str], str],
    tracking_uri: str,
    experiment: str,
    storage: str,
    address: str | None = None,
    weights_dir: str | None = None,
    quiet: bool = False,
    max_failures: int = 2,
) -> SweepOutcome:
    start = time.time()
    # Per-epoch checkpoints of a seconds-long epoch trip Tune's snapshot-frequency warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Workers must read the same tracking store and our packages; both come from the driver.
    ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
             configure_logging=not quiet)
    try:
        task = get_task(plan[0].task)
        client = MlflowClient(tracking_uri)
        parent = start_parent_run(client, experiment, spec, len(plan))
        logger = MlflowTrialLogger(tracking_uri, experiment, parent, identities)
        trainable = tune.with_resources(
            tune.with_parameters(tune_trial, weights_dir=weights_dir), trial_resources()
        )
        name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tuner = tune.Tuner(
            trainable,
            param_space=_hparams(plan[0]),
            tune_config=tune.TuneConfig(
                search_alg=optuna_exhaustive(plan, task.metric, task.mode),
                num_samples=len(plan),
                reuse_actors=True,  # a new worker re-imports torch/transformers: ~10 s a trial
                trial_dirname_creator=lambda t: f"{run_name(TrialSpec.from_config(t.config))}-{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                callbacks=[logger],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                verbose=0 if quiet else 1,
            ),
        )
        try:
            tuner.fit()
        except BaseException:
            client.set_terminated(parent, "FAILED")
            raise
        client.set_tag(parent, "trials_finished", str(logger.finished))
        client.set_tag(parent, "trials_failed", str(logger.failed))
        client.set_tag(parent, "ray.experiment_path", str(Path(storage) / name))
        client.set_terminated(parent, "FINISHED")
        return SweepOutcome(
            experiment, parent, logger.finished, logger.failed, str(Path(storage) / name),
            time.time() - start,
        )
    finally:
        ray.shutdown()


def _hparams(trial: TrialSpec) -> dict[str, object]:
    return {k: v for k, v in trial.to_config().items() if k not in AXES}
