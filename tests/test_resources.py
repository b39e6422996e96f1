"""GPU shares from a step's memory; CPU-only clusters ask for no GPU."""

from __future__ import annotations

import pytest

from experiments.memory_model import step_memory
from experiments.trial import Hyperparameters, TrialSpec
from orchestrator.resources import (
    cpus_for,
    cpus_per_gpu,
    data_parallel_workers,
    gpu_share,
    per_trial_resources,
    worker_resources,
)

GB = 10**9


def t(family, size, layers=(0,), batch=32):
    return TrialSpec(family, size, layers, "digits", "pretrained", 0,
                     Hyperparameters(batch_size=batch))


def test_small_blocks_share_a_gpu_big_ones_get_more():
    assert gpu_share(t("minilm", "l6"), 80 * GB) == 0.125
    assert gpu_share(t("opt", "125m"), 80 * GB) == 0.125
    span = t("llama", "2-70b", layers=tuple(range(40)), batch=64)  # a 40-layer 70B span
    assert step_memory(span).at(64) > 70 * GB
    assert gpu_share(span, 80 * GB) == 1.0
    big = t("opt", "66b", layers=tuple(range(8)))
    assert 0.125 < gpu_share(big, 80 * GB) < 1.0
    assert gpu_share(big, 24 * GB) > gpu_share(big, 80 * GB)  # a smaller card: a bigger share


def test_per_trial_resources_follow_the_cluster_and_the_override():
    cfg = t("opt", "66b", layers=tuple(range(8))).to_config()
    cpu_only = per_trial_resources(0, None, 80 * GB)(cfg)
    assert cpu_only.bundles == [{"CPU": 1}]
    estimated = per_trial_resources(4, None, 80 * GB)(cfg)
    assert 0 < estimated.bundles[0]["GPU"] < 1
    forced = per_trial_resources(4, 0.5, 80 * GB)(cfg)
    assert forced.bundles[0]["GPU"] == 0.5
    none_control = TrialSpec("", "", (), "digits", "none", 0).to_config()
    assert per_trial_resources(4, None, 80 * GB)(none_control).bundles[0]["GPU"] == 0.125


def test_n_gpus_per_trial_are_n_workers_of_a_gpu_each_driven_by_a_cpu_less_trial():
    """--gpus-per-trial 8: the Tune trial only drives Ray Train's workers (memory, no CPU or
    GPU of its own); each worker gets a whole GPU and its part of the node's CPUs, or on a
    cluster without GPUs a CPU (gloo)."""
    assert [data_parallel_workers(n) for n in (None, 0.5, 1.0, 2.0, 8.0)] == [1, 1, 1, 2, 8]
    cfg = t("opt", "125m").to_config()
    driver = per_trial_resources(16, 8.0, 80 * GB)(cfg).bundles
    assert driver == [{"memory": 2**29}]
    assert worker_resources(16, None, per_gpu=12.0) == (12, True)
    assert worker_resources(16, 4, per_gpu=12.0) == (4, True)
    assert worker_resources(0, None, per_gpu=0.0) == (1, False)


# A GPU cluster as ray.nodes() describes it: two 8-GPU nodes with different CPU counts, a
# CPU-only head node, and a dead GPU node (its resources no longer count).
GPU_CLUSTER = [
    {"Alive": True, "Resources": {"CPU": 96.0, "GPU": 8.0, "memory": 1e12}},
    {"Alive": True, "Resources": {"CPU": 64.0, "GPU": 8.0}},
    {"Alive": True, "Resources": {"CPU": 8.0}},
    {"Alive": False, "Resources": {"CPU": 2.0, "GPU": 8.0}},
]


def test_cpus_per_trial_from_a_simulated_gpu_cluster():
    """A trial's CPUs are its part of a GPU node's CPUs (the smallest node's, so it fits on
    every one): 8 CPUs per GPU here, so a half-GPU trial gets 4, a whole-GPU trial 8."""
    per_gpu = cpus_per_gpu(GPU_CLUSTER)
    assert per_gpu == 8.0
    cfg = t("opt", "66b", layers=tuple(range(8))).to_config()
    half = per_trial_resources(16, 0.5, 80 * GB, None, per_gpu)(cfg)
    assert half.bundles == [{"CPU": 4, "GPU": 0.5}]
    whole = per_trial_resources(16, 1.0, 80 * GB, None, per_gpu)(cfg)
    assert whole.bundles == [{"CPU": 8, "GPU": 1.0}]
    small = per_trial_resources(16, None, 80 * GB, None, per_gpu)(t("minilm", "l6").to_config())
    assert small.bundles == [{"CPU": 1, "GPU": 0.125}]  # an eighth of a GPU: one CPU
    forced = per_trial_resources(16, 0.5, 80 * GB, 6, per_gpu)(cfg)
    assert forced.bundles == [{"CPU": 6, "GPU": 0.5}]  # --cpus-per-trial wins
    assert per_trial_resources(0, None, 80 * GB, 3, 0.0)(cfg).bundles == [{"CPU": 3}]
    assert cpus_per_gpu(GPU_CLUSTER[2:3]) == 0.0 and cpus_for(0.25, 0.0) == 1


@pytest.mark.slow
def test_cpus_per_trial_from_a_live_ray_cluster_with_gpus():
    """Ray's own node table, from a local Ray that declares 4 GPUs and 16 CPUs (Ray does not
    check that the GPUs exist): each half-GPU trial asks for 2 CPUs."""
    import ray

    ray.init(num_cpus=16, num_gpus=4, include_dashboard=False, configure_logging=False)
    try:
        per_gpu = cpus_per_gpu(ray.nodes())
        gpus = ray.cluster_resources()["GPU"]
    finally:
        ray.shutdown()
    assert (per_gpu, gpus) == (4.0, 4.0)
    cfg = t("opt", "66b", layers=tuple(range(8))).to_config()
    assert per_trial_resources(gpus, 0.5, 80 * GB, None, per_gpu)(cfg).bundles == [
        {"CPU": 2, "GPU": 0.5}]
