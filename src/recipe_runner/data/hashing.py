"""Content hashes: of source files (cache keys, the manifest) and of token-id rows (the mix, per epoch)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def file_hash(path: Path) -> str:
    """sha256 over a file, or over a folder's files (names and bytes, in sorted order)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def pairs_hash(pairs) -> str:
    """sha256 over (input_ids, labels) rows, in order."""
    h = hashlib.sha256()
    for ids, labels in pairs:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(np.asarray(labels, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def ids_hash(datasets) -> str:
    return pairs_hash((ids, labels) for ds in datasets for ids, labels in zip(ds["input_ids"], ds["labels"]))
