"""How fast the command line answers: a bad flag, the dry runs and the report's help, each the
median of a few fresh interpreters, next to the bare interpreter start (``python -c pass``)
and to importing torch and transformers, measured side by side in one run: what the plan
path would cost if it imported them (it did before issue 16: 13-16 s for a bad family).

    python bench/cli_latency.py [--repeat 5]

Run in an empty temporary folder (no MLflow store: every dry-run cell is new). The machine's
load average is printed: anything else on the cores shows up in the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(ROOT / "sweep.py")
COMMANDS = {
    "python -c pass (interpreter start)": ["-c", "pass"],
    "sweep.py --family gpt9 (bad input, exit 2)": [SWEEP, "--family", "gpt9"],
    "sweep.py --epochs 0 (bad input, exit 2)": [SWEEP, "--epochs", "0"],
    "sweep.py --help": [SWEEP, "--help"],
    "sweep.py --dry-run (the default preset)": [SWEEP, "--dry-run"],
    "sweep.py --dry-run --family opt --sizes all": [SWEEP, "--dry-run", "--family", "opt",
                                                    "--sizes", "all"],
    "sweep.py --dry-run --preset paper_claims": [SWEEP, "--dry-run", "--preset", "paper_claims"],
    "python -m results.report --help": ["-m", "results.report", "--help"],
    "import torch, transformers (for scale)": ["-c", "import torch, transformers"],
}


def median_seconds(args: list[str], repeat: int, cwd: str) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, check=False,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"median of {args.repeat} fresh interpreters")
    with tempfile.TemporaryDirectory() as cwd:
        results = {name: median_seconds(cmd, args.repeat, cwd) for name, cmd in COMMANDS.items()}
    base = results["python -c pass (interpreter start)"]
    heavy = results["import torch, transformers (for scale)"]
    width = max(map(len, results))
    for name, seconds in results.items():
        print(f"{name:<{width}}  {seconds:6.2f} s  ({seconds / heavy:5.1%} of importing torch "
              f"and transformers; {seconds - base:5.2f} s above the bare interpreter)")


if __name__ == "__main__":
    main()
