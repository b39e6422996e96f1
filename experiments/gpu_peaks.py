"""GPUs' dense bf16 peaks: the MFU denominator of a trial's measured cost
(``experiments.cost``) and of the dry run's estimate (``experiments.cost_model``).

Plain Python (no torch), so the plan path can read it.
"""

from __future__ import annotations

import os
import re

# Device peaks: dense (no 2:4 sparsity) BF16 tensor-core FLOP/s, the MFU denominator. Keys are
# matched against torch.cuda.get_device_name(); the longest key found in the name wins.
PEAK_BF16_FLOPS = {
    # NVIDIA H100 datasheet: SXM 1,979 / PCIe 1,513 / NVL 1,671 TFLOPS with sparsity, halved.
    # "H100" alone is the SXM part: its CUDA name is "NVIDIA H100 80GB HBM3".
    "H100": 989.4e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835.5e12,
    # NVIDIA H200 datasheet: SXM 1,979 / NVL 1,671 with sparsity (the H100's tensor cores).
    "H200": 989.4e12,
    "H200 NVL": 835.5e12,
    # NVIDIA GH200 datasheet: the Hopper GPU at H100 SXM rates ("NVIDIA GH200 480GB").
    "GH200": 989.4e12,
    # NVIDIA A100 datasheet: 312 dense, SXM and PCIe alike.
    "A100": 312e12,
    # NVIDIA A10 datasheet: 125 dense (250 with sparsity).
    "A10": 125e12,
    # A10G (AWS G5): no NVIDIA datasheet; AWS / Baseten's A10-vs-A10G comparison: 70 dense.
    "A10G": 70e12,
    # NVIDIA L40S datasheet: 362.05 (733 with sparsity); L40 datasheet: 181.05 (362.1).
    "L40S": 362.05e12,
    "L40": 181.05e12,
    # NVIDIA L4 datasheet: 242 with sparsity, halved.
    "L4": 121e12,
    # Ada Lovelace whitepaper, RTX 4090: BF16 with FP32 accumulate 165.2 (330.4 with sparsity).
    "RTX 4090": 165.2e12,
    # NVIDIA HGX B200 datasheet: 4.5 PFLOPS FP16/BF16 per GPU with sparsity, halved.
    "B200": 2250e12,
}
PEAK_TFLOPS_ENV = "LMBLOCKS_PEAK_TFLOPS"  # overrides the table (TFLOP/s) when set


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """The device's dense bf16 peak in FLOP/s, the MFU denominator.

    ``override_tflops`` (else ``$LMBLOCKS_PEAK_TFLOPS``) wins, for a GPU not in the table or
    a clock the datasheet does not describe; else the longest table key found in the name as
    a whole word ("H100 PCIe" before "H100"; "A100" is not found in "RTX A1000"); else None,
    and MFU is not reported rather than reported against a guess.
    """
    if override_tflops is None and os.environ.get(PEAK_TFLOPS_ENV):
        try:
            override_tflops = float(os.environ[PEAK_TFLOPS_ENV])
        except ValueError:
            raise ValueError(f"{PEAK_TFLOPS_ENV}={os.environ[PEAK_TFLOPS_ENV]!r}: expected "
                             "the peak in TFLOP/s, e.g. 989.4") from None
    if override_tflops is not None:
        return float(override_tflops) * 1e12
    found = [key for key in PEAK_BF16_FLOPS
             if re.search(rf"(?<![a-z0-9]){re.escape(key.lower())}(?![a-z0-9])",
                          device_name.lower())]
    return PEAK_BF16_FLOPS[max(found, key=len)] if found else None


def mfu(achieved_flops_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved / peak; None when the peak is unknown."""
    return achieved_flops_per_s / peak if peak else None
