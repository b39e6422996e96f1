"""Layer-only loading vs ``from_pretrained`` of the whole model, measured side by side.

Generates a 24-layer sharded OPT checkpoint (fp16, as OPT is published) with transformers'
own classes, then, each in a fresh subprocess so peak memory is its own:
- layer-only: ``encoders.layer_loading.load_layers`` for one middle layer;
- whole model: ``OPTForCausalLM.from_pretrained`` (what you would do without lmblocks).
Prints bytes read, wall time (median of --repeats, page cache warm for both) and the peak
resident memory above the post-import baseline (VmHWM, reset after the imports), with ratios.

    python bench/load_layer.py [--hidden 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from transformers import OPTForCausalLM
import encoders.families
from encoders.checkpoints import CheckpointDir
from encoders.layer_loading import load_layers
from encoders.registry import get_family
from encoders.safetensors_reader import SafetensorsReader
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) after the imports
base = status("VmRSS:")
t0 = time.perf_counter()
if {mode!r} == "layer":
    reader = SafetensorsReader()
    out = load_layers(get_family("opt"), CheckpointDir(__import__("pathlib").Path({path!r}), "weights-dir", "bench"), [{layer}], reader=reader)
    nbytes, files = reader.bytes_read, len(set(reader.files_opened))
else:
    model = OPTForCausalLM.from_pretrained({path!r}, dtype=torch.float16)
    nbytes, files = None, None
dt = time.perf_counter() - t0
peak = status("VmHWM:")
print(json.dumps({{"seconds": dt, "peak_rss_kb": peak - base, "bytes": nbytes, "files": files}}))
"""


def make_checkpoint(path: Path, hidden: int, layers: int) -> None:
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        ffn_dim=4 * hidden, vocab_size=8192, max_position_embeddings=512,
        word_embed_proj_dim=hidden,
    )
    torch.manual_seed(0)
    model = OPTForCausalLM(config).to(torch.float16)
    shard = f"{max(1, (12 * hidden * hidden * 2 * 3) // 1_000_000)}MB"  # ~3 layers a shard
    model.save_pretrained(path, max_shard_size=shard)


def measure(mode: str, path: Path, layer: int) -> dict:
    code = CHILD.format(root=str(ROOT), mode=mode, path=str(path), layer=layer)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    layer = args.layers // 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "opt-bench"
        make_checkpoint(path, args.hidden, args.layers)
        files = sorted(path.glob("*.safetensors"))
        total = sum(f.stat().st_size for f in files)
        results = {}
        for mode in ("layer", "whole"):
            measure(mode, path, layer)  # warm the page cache for both alike
            runs = [measure(mode, path, layer) for _ in range(args.repeats)]
            results[mode] = {
                "seconds": statistics.median(r["seconds"] for r in runs),
                "peak_mb": statistics.median(r["peak_rss_kb"] for r in runs) / 1024,
                "bytes": runs[0]["bytes"] if mode == "layer" else total,
                "files": runs[0]["files"] if mode == "layer" else len(files),
            }
    lo, wh = results["layer"], results["whole"]
    print(f"checkpoint: OPT-style, {args.layers} layers, hidden {args.hidden}, fp16, "
          f"{len(files)} shards, {total / 1e6:.1f} MB; layer {layer}")
    print(f"{'':14}{'bytes read':>14}{'shards':>8}{'seconds':>10}{'peak RSS MB':>13}")
    for name, r in (("layer-only", lo), ("from_pretrained", wh)):
        print(f"{name:14}{r['bytes'] / 1e6:>11.2f} MB{r['files']:>8}{r['seconds']:>10.3f}"
              f"{r['peak_mb']:>13.1f}")
    print(f"ratios whole/layer: bytes {wh['bytes'] / lo['bytes']:.1f}x, "
          f"time {wh['seconds'] / lo['seconds']:.1f}x, peak memory {wh['peak_mb'] / max(lo['peak_mb'], 0.1):.1f}x")


if __name__ == "__main__":
    main()
