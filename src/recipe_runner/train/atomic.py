"""Writes a kill cannot leave half done: checkpoints and adapter folders appear whole or not at all.

A file is written beside its target as `.NAME.partial`, flushed to disk, then renamed over the
target (a rename within one folder is atomic on POSIX). Lightning's own checkpoint write goes
through fsspec, which writes a temp file in /tmp and *moves* it: across filesystems that is a
copy, so a kill mid-copy leaves a truncated `last.ckpt` that `train.resume=last` would pick.

A folder (an adapter: weights, config, card) is written as `.NAME.partial/` and swapped in with
two renames; between them only the previous folder parked as `.NAME.old` exists, never a half
one. Names starting with "." are never read as checkpoints or adapters.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def partial_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial")


def _sync_folder(folder: Path) -> None:
    """The rename itself reaches the disk (a crash of the machine, not only of the process)."""
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(target: Path | str):
    """`with atomic_file(path) as fh: fh.write(...)`: the target is replaced only when the block ends."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_of(target)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)


def publish_folder(partial: Path, target: Path) -> None:
    """Swap a fully written folder in for `target` (which may exist)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    _sync_folder(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def copy_folder(source: Path, target: Path) -> None:
    """`target` := a copy of `source`, swapped in whole."""
    partial = partial_of(target)
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    publish_folder(partial, target)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with `atomic_file` in place of fsspec's temp-file move."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_file(path) as fh:
            torch.save(checkpoint, fh)
