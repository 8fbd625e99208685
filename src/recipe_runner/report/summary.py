"""summary.json: the run's numbers for scripts, sweeps' `stage=compare` and the closing lines."""

from __future__ import annotations

import json
from pathlib import Path


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
