"""GPU shares from the block's memory; CPU-only clusters ask for no GPU."""

from __future__ import annotations

from experiments.trial import Hyperparameters, TrialSpec
from orchestrator.resources import block_memory_bytes, gpu_share, per_trial_resources

GB = 10**9


def t(family, size, layers=(0,), batch=32):
    return TrialSpec(family, size, layers, "digits", "pretrained", 0,
                     Hyperparameters(batch_size=batch))


def test_small_blocks_share_a_gpu_big_ones_get_more():
    assert gpu_share(t("minilm", "l6"), 80 * GB) == 0.125
    assert gpu_share(t("opt", "125m"), 80 * GB) == 0.125
    span = t("llama", "2-70b", layers=tuple(range(40)), batch=64)  # a 40-layer 70B span
    assert block_memory_bytes(span) > 70 * GB
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
