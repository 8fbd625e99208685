"""Which weights a base is: a sha256 over its safetensors files.

An adapter card records it (an adapter is never put on another base: train/adapter_card.py), and
the self-distilled general data are keyed by it (data/self_distill.py: another base's answers are
never reused). SmolLM2-135M in float32 is 540 MB: about a second, once per process.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def weights_sha256(model_path: str) -> str | None:
    """sha256 over the base's *.safetensors files (names and bytes, sorted); None for a hub id."""
    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    # hashed once per process while the files are unchanged (size and mtime)
    return _hash(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@lru_cache(maxsize=8)
def _hash(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        f = Path(name)
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()
