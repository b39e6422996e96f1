"""Training throughput of a trial through ``run_trial`` against the bare loop a timm user would
write for the same model and data, side by side in one run; and the data-wait share with
DataLoader workers off (0) and ``auto``.

The data: a synthetic JPEG ImageFolder at 224 (ImageNet layout) written by the bench, read
by the ``imagenet-vit-*`` task with timm's DeiT transforms (RandAugment, random erasing), so
decoding and augmenting cost what they cost on ImageNet. The bare loop uses the same model
(``task.build_model``), the same datasets, batch size and DataLoader settings (workers,
pinning, persistence, prefetch), and on CUDA the same bf16 autocast, TF32 and fused AdamW.
Both are timed the same way: the training phase of each epoch, the device drained at its
end; the first epoch (worker start-up, cuDNN/compile warm-up) is left out. Workers: what
``auto`` gives on a GPU (the CPUs but one) against none.

CPU: ViT-Tiny/16 + one MiniLM-shaped random block. CUDA: ViT-S/16 + one LLaMA-7B-shaped
random block in bf16, with MFU against the device's bf16 peak.

    python bench/trial_throughput.py [--images 192] [--epochs 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.lm.controls import build_block
from experiments.compute import configure
from experiments.cost import device_name, mfu, peak_flops
from experiments.loading import loader_settings, resolve_num_workers
from experiments.tasks.registry import get_task
from experiments.training import available_cpus, run_trial
from experiments.trial import Hyperparameters, TrialSpec

CLASSES = 4


def write_jpeg_folder(root: Path, n_train: int, n_val: int, seed: int = 0) -> None:
    """Smooth random colour fields with noise at 224x224, quality 90 (~20-40 KB each, the
    decode cost of a resized ImageNet photo)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            d = root / split / f"class{i % CLASSES}"
            d.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((224, 224), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.int16) + rng.integers(-20, 21, (224, 224, 3))
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpeg", quality=90)


def setup(device: torch.device) -> tuple[str, str, str, str]:
    """(task, family, size, layer label) of the bench's model on this device."""
    if device.type == "cuda":
        return "imagenet-vit-small", "llama", "2-7b", "31"
    return "imagenet-vit-tiny", "minilm", "l6", "5"


def trial_spec(device: torch.device, args, num_workers: str) -> TrialSpec:
    task, family, size, layer = setup(device)
    hp = Hyperparameters(epochs=args.epochs, batch_size=args.batch_size, lr=5e-4,
                         num_workers=num_workers)
    return TrialSpec(family, size, (int(layer),), task, "random", 0, hp)


def through_run_trial(spec: TrialSpec, data_dir: Path, device: torch.device) -> dict:
    seen: list[dict] = []
    run_trial(spec, lambda m, s: seen.append(m), data_dir=data_dir, device=device)
    steady = seen[1:] or seen
    return {
        "samples_per_s": statistics.median(m["samples_per_s"] for m in steady),
        "data_wait_share": statistics.median(m["data_wait_share"] for m in steady),
        "gflops_step": seen[0]["gflops_train_step_per_sample"],
        "num_workers": seen[0]["num_workers"],
    }


def bare_loop(spec: TrialSpec, data_dir: Path, device: torch.device) -> dict:
    """What a timm user writes: build, AdamW, for x, y in loader: forward, backward, step."""
    hp = spec.hparams
    task = get_task(spec.task)
    compute = configure(hp, device)
    torch.manual_seed(0)
    block, _ = build_block(family=spec.family, size=spec.size, layers=spec.layers,
                           control="random", seed=0, visual_dim=task.visual_dim,
                           dtype=compute.dtype)
    model = task.build_model(block).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.lr,
                            weight_decay=hp.weight_decay, fused=compute.fused_adamw or None)
    train_ds, _ = task.build_data(data_dir)
    workers = resolve_num_workers(hp.num_workers, available_cpus(), False, device)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=hp.batch_size, shuffle=True,
                                         **loader_settings(workers, device))
    rates, waits = [], []
    for _ in range(hp.epochs):
        model.train()
        n, wait = 0, 0.0
        start = time.perf_counter()
        batches = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            wait += time.perf_counter() - t
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with compute.autocast():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        rates.append(n / seconds)
        waits.append(wait / seconds)
    steady = slice(1, None) if len(rates) > 1 else slice(None)
    return {"samples_per_s": statistics.median(rates[steady]),
            "data_wait_share": statistics.median(waits[steady]), "num_workers": workers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=192, help="training images (val: a quarter)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    task, family, size, layer = setup(device)
    print(f"{task} + {family}-{size} layer {layer} (random block), {args.images} JPEGs at 224, "
          f"batch {args.batch_size}, {args.epochs} epochs (first left out), {device_name(device)}, "
          f"{available_cpus()} CPUs", flush=True)
    # workers: what ``auto`` gives on a GPU (the trial's CPUs but one); on CPU ``auto`` is 0
    # (the cores compute), so the bench says what workers would cost there
    n = str(resolve_num_workers("auto", available_cpus(), False, "cuda"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpeg_folder(root, args.images, max(CLASSES, args.images // 4))
        bare = bare_loop(trial_spec(device, args, n), root, device)
        print(f"bare loop, workers {n}: {bare['samples_per_s']:8.1f} samples/s,"
              f" data wait {bare['data_wait_share']:.1%}", flush=True)
        auto = through_run_trial(trial_spec(device, args, n), root, device)
        print(f"run_trial, workers {n}: {auto['samples_per_s']:8.1f} samples/s,"
              f" data wait {auto['data_wait_share']:.1%}", flush=True)
        zero = through_run_trial(trial_spec(device, args, "0"), root, device)
        print(f"run_trial, workers 0: {zero['samples_per_s']:8.1f} samples/s,"
              f" data wait {zero['data_wait_share']:.1%}", flush=True)
    print(f"run_trial / bare loop (workers {n}): "
          f"{auto['samples_per_s'] / bare['samples_per_s']:.3f}")
    print(f"workers {n} / workers 0 (run_trial): {auto['samples_per_s'] / zero['samples_per_s']:.2f}x;"
          f" data wait {zero['data_wait_share']:.1%} -> {auto['data_wait_share']:.1%}")
    achieved = auto["gflops_step"] * 1e9 * auto["samples_per_s"]
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    util = mfu(achieved, peak)
    print(f"train step {auto['gflops_step']:.2f} GFLOPs/sample -> {achieved / 1e12:.3f} TFLOP/s"
          + (f", MFU {util:.1%} of {peak / 1e12:.0f} TFLOP/s bf16" if util is not None
             else " (MFU: GPU only)"))


if __name__ == "__main__":
    main()
