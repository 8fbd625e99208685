"""train.resume: where a run continues from.

- "last": this recipe's newest run that has a checkpoint;
- a run folder or a .ckpt file;
- "sweep" (in a sweep, `-m`): each job looks for itself (the same folder name: its number and
  swept values) in this recipe's earlier sweep folders, newest first. A job that finished there
  (summary.json, no error.txt) is not run again: its folder is copied into the new sweep folder
  (files of 1 MB or more as hard links: no second copy of the adapters on disk), so the new
  folder holds the whole sweep for stage=compare. A job that left a checkpoint resumes from it;
  any other starts afresh.

Checkpoints are written atomically (train/atomic.py), so `last.ckpt` is always a whole file;
a killed write leaves only a `.last.ckpt.partial`, which nothing here reads.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from recipe_runner.errors import RecipeError

SWEEP = "sweep"
LAST = "last"


def find_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    resume = cfg.train.resume
    if resume is None:
        return None
    if resume == LAST:
        runs = Path(cfg.paths.output_dir) / "runs" / cfg.name
        found = sorted((p for p in runs.glob("*/checkpoints/last.ckpt") if run_dir not in p.parents),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise RecipeError(f"train.resume=last: no checkpoints/last.ckpt under {runs}")
        return str(found[-1])
    if resume == SWEEP:
        earlier = earlier_job(run_dir)
        ckpt = earlier / "checkpoints" / "last.ckpt" if earlier else None
        return str(ckpt) if ckpt and ckpt.exists() and not finished(earlier) else None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.exists():
        raise RecipeError(f"train.resume={resume}: {path} does not exist")
    return str(path)


def finished(job: Path) -> bool:
    return (job / "summary.json").exists() and not (job / "error.txt").exists()


def earlier_job(run_dir: Path) -> Path | None:
    """This job's folder in the newest earlier sweep of the recipe that ran it (finished or not)."""
    sweep = run_dir.parent
    for other in sorted((p for p in sweep.parent.iterdir() if p.is_dir() and p != sweep), reverse=True):
        job = other / run_dir.name
        if finished(job) or (job / "checkpoints" / "last.ckpt").exists():
            return job
    return None


def finished_earlier(cfg: DictConfig, run_dir: Path, multirun: bool) -> Path | None:
    """train.resume=sweep: the earlier folder where this job finished (copied into run_dir), else None."""
    if cfg.train.resume != SWEEP:
        return None
    if not multirun:
        raise RecipeError("train.resume=sweep resumes a sweep: re-run the same `python run.py -m ...` command with "
                          "it; a single run resumes with train.resume=last or a run folder")
    earlier = earlier_job(run_dir)
    if earlier is None or not finished(earlier):
        return None
    for item in earlier.iterdir():  # the new job folder holds Hydra's .hydra/ and the log already
        if item.name in (".hydra", "run.log"):
            continue
        if item.is_dir():
            shutil.copytree(item, run_dir / item.name, copy_function=_link_or_copy, dirs_exist_ok=True)
        else:
            _link_or_copy(item, run_dir / item.name)
    return earlier


def _link_or_copy(source, target) -> None:
    """Big files (adapter weights) as hard links; small ones (summary.json, cards) copied, so
    rewriting one in either folder never changes the other."""
    if os.path.getsize(source) >= 1 << 20:
        try:
            os.link(source, target)
            return
        except OSError:  # another filesystem, or no hard links there
            pass
    shutil.copy2(source, target)
