#!/usr/bin/env python
"""recipe-runner: python run.py [recipe=NAME|path.yaml] [key=value ...] [-m for sweeps] [--cfg job]"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works before `pip install -e .` too

from recipe_runner.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
