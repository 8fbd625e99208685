"""One run, dispatched by stage through the table in stages.py: each row names the function doing it.

    chat, serve, export, synthesize, compare   run(cfg, run_dir) -> the summary's fields; written here
    train, prepare                             pipeline(cfg, run_dir, job, started) -> summary, written
                                               by pipeline.py (rank 0): prepare -> Prepared, then train
                                               fits (train/fit.py -> Trained) with the checks

`run` validates the recipe for the stage it dispatches to before anything heavy loads; a stage's
module is imported only when that stage runs, so the training pipeline (torch, Lightning,
datasets) loads only for the stages that train, and chat, serve, export and every config error
start in seconds. Before it does, prepare and train read their data files once
(data/precheck.py): a malformed line is reported in seconds too.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from recipe_runner.config.schema import Stage, drop_null_sources
from recipe_runner.validate import validate
from recipe_runner.report.summary import write_summary
from recipe_runner.stages import load, stage_named


def run(cfg: DictConfig, run_dir: Path, job: dict) -> dict:
    started = time.time()
    drop_null_sources(cfg)
    stage = stage_named(cfg.stage)
    validate(cfg, stage.name)
    work = load(stage.run)
    if stage.writes_summary:
        return work(cfg, run_dir, job, started)
    summary = {"stage": stage.name, **work(cfg, run_dir)}
    write_summary(run_dir, summary)
    return summary


def pipeline(cfg: DictConfig, run_dir: Path, job: dict, started: float) -> dict:
    """stage=train and stage=prepare: the data checked first, then the training pipeline."""
    from recipe_runner.data.precheck import check_data

    stage = Stage(cfg.stage)
    check_data(cfg, stage)  # a data error before Lightning, transformers, the tokenizer and the model
    from recipe_runner.pipeline import run as run_pipeline

    return run_pipeline(cfg, stage, run_dir, job, started)


def compare(cfg: DictConfig, run_dir: Path) -> dict:
    """A finished sweep's leaderboard; nothing is trained."""
    from recipe_runner.report.compare import compare as compare_sweep

    return compare_sweep(cfg.sweep_dir)
