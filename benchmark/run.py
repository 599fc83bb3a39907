"""Entry point: `python benchmark/run.py --table 3` (see `--help`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
