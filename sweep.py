"""Entry point: ``python sweep.py [--family opt --sizes all ...]`` (see orchestrator/cli.py)."""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main())
