"""A content-keyed cache of prepared sources: a folder per key, written whole or not at all.

A key is the sha256 of everything that decides the folder's contents (source file hash and
settings for a cleaned source; that key plus tokenizer, template and persona for a tokenized
one). A changed template re-tokenizes and re-reads nothing; a changed mix ratio, seed or
learning rate touches neither. Folders are built under a temporary name and renamed into
place, so an interrupted prepare never leaves a half-written entry behind.

The clean key is computed here, not in prepare.py, so the early data check (precheck.py) can
look an entry up before datasets, a tokenizer or torch load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from recipe_runner.data.corpus import plain_text
from recipe_runner.data.hashing import file_hash

VERSION = 1  # bump when the cached layout or the cleaning/encoding semantics change
TOKEN_BOUNDS = ("min_tokens", "max_tokens")  # data.clean keys applied after tokenizing: in the tokens key only


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def source_hash(src) -> str:
    path = Path(src.path)
    if path.exists():
        return file_hash(path)
    return key_of("hub", src.path, src.subset, src.split)  # a hub name: its identity is all we can hash


def clean_key(src, cfg, sha: str, tok_hash: str | None) -> str:
    """The key of a source's clean entry: its content hash and settings, data.clean without the
    token bounds, the placeholders, and for plain text, which is cut into windows of tokens (a text
    format, or a table or dataset mapping a `text` column: corpus.plain_text), the tokenizer (`tok_hash`)."""
    clean_cfg = OmegaConf.to_container(cfg.data.clean, resolve=True)
    for k in TOKEN_BOUNDS:
        clean_cfg.pop(k)
    text_tokens = tok_hash if plain_text(src) else None
    return key_of(VERSION, sha, OmegaConf.to_container(src, resolve=True), clean_cfg,
                  dict(cfg.data.placeholders), text_tokens)


class DataCache:
    def __init__(self, root: str | Path | None):
        """root None: no cache; every entry is built in a temporary folder for this process only."""
        self.root = Path(root) if root else None
        self._scratch: tempfile.TemporaryDirectory | None = None

    def done(self, kind: str, key: str) -> bool:
        """Whether the (kind, key) entry is complete in the cache folder (never, without one)."""
        return self.root is not None and (self.folder(kind, key) / "DONE").exists()

    def folder(self, kind: str, key: str) -> Path:
        return self.root / f"{kind}-{key[:16]}"

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
        folder = self.folder(kind, key)
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
