"""Why a trial failed, in one line and one kind, from the error file Tune wrote."""

from __future__ import annotations

from pathlib import Path

from orchestrator.tracking import failure_kind, failure_reason

DATA = Path(__file__).parent / "data"

TRACEBACK = """Failure # 1 (occurred at 2026-11-29_08-10-24)
ray::ImplicitFunc.train() (pid=1, ip=10.0.0.1, actor_id=ab)
  File "/x/training.py", line 58, in train_epoch
    raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}")
experiments.training.NonFiniteLossError: loss is nan at epoch 1, step 0
"""


def test_ray_memory_monitor_kill_is_out_of_memory():
    text = (DATA / "ray_oom_error.txt").read_text()  # written by Ray 2.60's OOM killer
    reason = failure_reason(text)
    assert reason.startswith("1 worker(s) were killed due to the node running low on memory")
    assert failure_kind(reason) == "out-of-memory"


def test_exception_line_wins_over_the_last_line():
    reason = failure_reason(TRACEBACK + "some trailing advice\n")
    assert reason == "experiments.training.NonFiniteLossError: loss is nan at epoch 1, step 0"
    assert failure_kind(reason) == "non-finite-loss"


def test_torch_allocator_failures_are_out_of_memory():
    cuda = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    cpu = "RuntimeError: [enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"
    assert failure_kind(failure_reason(f"Traceback\n{cuda}\n")) == "out-of-memory"
    assert failure_kind(failure_reason(f"Traceback\n{cpu}\n")) == "out-of-memory"
    assert failure_kind(failure_reason("ValueError: bad\n")) == "error"
    assert failure_reason("") == "unknown error"
    assert len(failure_reason("E: " + "x" * 900)) == 500

