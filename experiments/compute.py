"""How a trial uses the hardware it landed on: compute dtype, autocast, TF32, the optimizer's
kernel, torch.compile.

On CUDA a trial runs the whole model under bf16 autocast (the frozen block keeps its own
weights' dtype: it is cast once, when built), allows TF32 for what stays float32, and uses
AdamW's fused kernel; float16 adds a gradient scaler. On CPU it computes in float32 (bf16
matmuls are slow on most CPUs) unless asked otherwise, and then only the block is cast, as
before this module existed. Every choice is returned as ``settings()`` for the run's tags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from experiments.trial import Hyperparameters


def resolve_compute_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto``: float32 on CPU (bf16 matmuls are slow there), bfloat16 on a GPU."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for float32 matmuls and convolutions (what autocast leaves in fp32;
    reductions, the loss and norms' statistics are unaffected). Process-wide, so set both
    ways: a reused Ray worker must not inherit the previous trial's choice. torch >= 2.9's
    per-backend ``fp32_precision`` where present, the older flags otherwise."""
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        conv.fp32_precision = "tf32" if enabled else "ieee"
    else:  # pragma: no cover - older torch
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


@dataclass(frozen=True)
class Compute:
    """One trial's compute choices on one device."""

    device: torch.device
    dtype: torch.dtype  # the block's weights and, on CUDA, autocast's dtype
    autocast_dtype: torch.dtype | None  # None: no autocast
    tf32: bool
    fused_adamw: bool
    compile: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """float16 autocast needs loss scaling (bf16 has float32's range and does not)."""
        if self.autocast_dtype is torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None

    def optimizer(self, params: Iterable[nn.Parameter], hp: Hyperparameters
                  ) -> torch.optim.AdamW:
        return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay,
                                 fused=True if self.fused_adamw else None)

    def settings(self) -> dict[str, object]:
        """For the run's tags (``experiments.cost.RUN_SETTINGS``)."""
        return {
            "autocast": str(self.autocast_dtype).removeprefix("torch.")
            if self.autocast_dtype else "off",
            "tf32": self.tf32,
            "fused_adamw": self.fused_adamw,
            "compile": self.compile,
        }


def configure(hp: Hyperparameters, device: str | torch.device) -> Compute:
    """The trial's compute choices; sets TF32 (a process-wide flag) on CUDA: on with a reduced
    compute dtype, off when the trial asked for float32 (it asked for full precision)."""
    device = torch.device(device)
    dtype = resolve_compute_dtype(hp.compute_dtype, device)
    cuda = device.type == "cuda"
    reduced = dtype != torch.float32
    if cuda:
        set_tf32(reduced)
    return Compute(
        device=device,
        dtype=dtype,
        autocast_dtype=dtype if cuda and reduced else None,
        tf32=cuda and reduced,
        fused_adamw=cuda,  # fused AdamW: CUDA tensors; on CPU the default kernel is kept
        compile=bool(hp.compile),
    )
