"""One run, dispatched by stage; each stage a function with a typed result:

    compare(cfg, run_dir)                  -> summary    a finished sweep's leaderboard
    use(cfg, stage, run_dir)               -> summary    chat, serve or export a trained adapter (use/)
    synthesize(cfg, run_dir)               -> report     training dialogues from the bible (synthesize/)
    pipeline.prepare(cfg, run_dir)         -> Prepared   data and its report; no weights load
    pipeline.train(cfg, prepared, ...)     -> summary    fit (train/fit.py -> Trained) with the checks,
                                                         then summary.json and report.md

`run` validates the recipe for the stage it dispatches to before anything heavy loads; the
training pipeline (torch, Lightning, datasets) is imported only by the stages that train, so
chat, serve, export and every config error start in seconds. Before it is, prepare and train
read their data files once (data/precheck.py): a malformed line is reported in seconds too.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from recipe_runner.config.schema import Stage, drop_null_sources
from recipe_runner.config.validate import validate
from recipe_runner.report.summary import write_summary

USE_STAGES = (Stage.chat, Stage.serve, Stage.export)


def run(cfg: DictConfig, run_dir: Path, job: dict) -> dict:
    started = time.time()
    drop_null_sources(cfg)
    stage = Stage(cfg.stage)
    validate(cfg, stage)
    if stage is Stage.compare:
        return compare(cfg, run_dir)
    if stage in USE_STAGES:
        return use(cfg, stage, run_dir)
    if stage is Stage.synthesize:
        return synthesize(cfg, run_dir)
    from recipe_runner.data.precheck import check_data

    check_data(cfg, stage)  # a data error before Lightning, transformers, the tokenizer and the model
    from recipe_runner import pipeline

    return pipeline.run(cfg, stage, run_dir, job, started)


def compare(cfg: DictConfig, run_dir: Path) -> dict:
    """A finished sweep's leaderboard; nothing is trained."""
    from recipe_runner.report.compare import compare as compare_sweep

    summary = compare_sweep(cfg.sweep_dir)
    write_summary(run_dir, summary)
    return summary


def use(cfg: DictConfig, stage: Stage, run_dir: Path) -> dict:
    """Talk to, serve or export what a run trained: only the adapter folders are read."""
    if stage is Stage.chat:
        from recipe_runner.use.chat import chat as run_stage
    elif stage is Stage.serve:
        from recipe_runner.use.serve import serve as run_stage
    else:
        from recipe_runner.use.export import export as run_stage
    summary = {"stage": stage.value, **run_stage(cfg, run_dir)}
    write_summary(run_dir, summary)
    return summary


def synthesize(cfg: DictConfig, run_dir: Path) -> dict:
    """Dialogues from the bible into synth.out; the run folder keeps the log and the summary."""
    from recipe_runner.synthesize.stage import synthesize as run_stage

    summary = {"stage": Stage.synthesize.value, **run_stage(cfg, run_dir)}
    write_summary(run_dir, summary)
    return summary
