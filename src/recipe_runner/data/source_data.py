"""One source after cleaning and tokenizing: what prepare hands to mixing."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset

from recipe_runner.config.schema import Role


@dataclass
class SourceData:
    """One source after cleaning and tokenizing: the rows, their lengths and dedup keys, the counts."""

    name: str
    role: Role
    weight: float
    upsample: float
    ds: Dataset  # encoded rows that passed every filter
    n_tokens: np.ndarray
    n_turns: np.ndarray  # trained assistant turns per row
    bands: np.ndarray | None  # LSH band keys per row (for the contamination check)
    read: int  # examples read (after chunking), before any filter
    bad_lines: int
    cleaned: dict[str, int]  # filter -> examples it dropped
    samples: dict[str, list] = field(default_factory=dict)  # filter -> a few dropped examples
    sha256: str = ""  # of the source file(s)
    cache: dict = field(default_factory=dict)  # stage -> {"key", "reused"}
