"""A content-keyed cache of prepared sources: a folder per key, written whole or not at all.

A key is the sha256 of everything that decides the folder's contents (source file hash and
settings for a cleaned source; that key plus tokenizer, template and persona for a tokenized
one). A changed template re-tokenizes and re-reads nothing; a changed mix ratio, seed or
learning rate touches neither. Folders are built under a temporary name and renamed into
place, so an interrupted prepare never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class DataCache:
    def __init__(self, root: str | Path | None):
        """root None: no cache; every entry is built in a temporary folder for this process only."""
        self.root = Path(root) if root else None
        self._scratch: tempfile.TemporaryDirectory | None = None

    def entry(self, kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """The folder for (kind, key), built by `build(folder)` if missing; returns (folder, reused)."""
        if self.root is None:
            if self._scratch is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="recipe-runner-data-")
            folder = Path(self._scratch.name) / f"{kind}-{key[:16]}"
            if not folder.exists():
                folder.mkdir()
                build(folder)
            return folder, False
        folder = self.root / f"{kind}-{key[:16]}"
        if (folder / "DONE").exists():
            return folder, True
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=self.root))
        try:
            build(tmp)
            (tmp / "DONE").write_text(key + "\n")
            if folder.exists() and not (folder / "DONE").exists():  # a stale, unfinished entry
                shutil.rmtree(folder)
            try:
                os.replace(tmp, folder)
            except OSError:
                if not (folder / "DONE").exists():  # not a parallel sweep job finishing the same entry first
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder, False
