"""One GPU per job when a sweep runs several jobs at once on one machine (hydra/launcher=parallel).

joblib starts N worker processes and hands each the next job; nothing tells a job which GPU the
others hold. Each job takes an exclusive lock on `<sweep>/.devices/gpuK.lock` for the first free K
and keeps it until it ends (closing the file, or the worker dying, releases it), so with
n_jobs <= GPUs no two jobs share a device whatever order they finish in.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import IO

from recipe_runner.errors import RecipeError


def claim_gpu(folder: Path, count: int, wait_s: float | None = None) -> tuple[int, IO]:
    """(index of a free GPU, the open lock file to close when the job ends)."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        for k in range(count):
            fh = open(folder / f"gpu{k}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            fh.write(f"{k}\n")
            fh.flush()
            return k, fh
        if deadline is not None and time.monotonic() > deadline:
            raise RecipeError(f"hydra/launcher=parallel: all {count} GPUs are held by other jobs of this sweep "
                              f"(locks in {folder}); set hydra.launcher.n_jobs to at most {count}")
        time.sleep(1.0)
