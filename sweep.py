"""Entry point: ``python sweep.py [--family opt --sizes all ...]`` (see orchestrator/cli.py)."""

import gc
import sys

from orchestrator.cli import main

if __name__ == "__main__":
    code = main()
    # The interpreter's teardown would garbage-collect every object torch, Ray and MLflow
    # made (about 2 s on 2 cores); at exit there is nothing left to collect.
    gc.freeze()
    sys.exit(code)
