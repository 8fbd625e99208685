"""The training pipeline's stages: prepare (data, no weights) and train (fit, checks, summary).

Imported by runner.py only for stage=prepare and stage=train: torch and datasets load here,
not when chatting, serving or exporting. Lightning (~4 s of imports on 2 cores, beyond torch and
transformers) loads only when training: stage=prepare never needs it.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from recipe_runner.errors import RecipeError
from recipe_runner.config.schema import Stage
from recipe_runner.console import console
from recipe_runner.data.manifest import write_data_files
from recipe_runner.data.prepared import Prepared, load_prepared
from recipe_runner.train.adapter_card import stamp_checks
from recipe_runner.report import wandb_log
from recipe_runner.report.data_report import data_sections, distilled_line, length_histogram, write_report
from recipe_runner.report.mix_table import mix_table
from recipe_runner.report.run_report import training_sections
from recipe_runner.report.summary import write_summary
from recipe_runner.train.launch import launch_rank
from recipe_runner.train.resume import find_checkpoint


def run(cfg: DictConfig, stage: Stage, run_dir: Path, job: dict, started: float) -> dict:
    if stage is Stage.prepare:
        seed_all(cfg.train.seed)
        return prepare_summary(cfg, prepare(cfg, run_dir), run_dir, job, started)
    import lightning as L

    L.seed_everything(cfg.train.seed, verbose=False)
    ckpt = find_checkpoint(cfg, run_dir)  # a wrong path fails before data
    return train(cfg, prepare(cfg, run_dir), run_dir, job, ckpt, started)


def trial_pruning(cfg: DictConfig, evals):
    """In a search trial (hydra/sweeper=optuna sets trial.*): the per-epoch report to the study."""
    if not cfg.trial.journal:
        return None
    from recipe_runner.search.pruning import TrialPruning

    return TrialPruning(cfg.trial, evals)


def seed_all(seed: int) -> None:
    """What Lightning's seed_everything seeds (Python, NumPy, torch, its env variable), without
    importing Lightning."""
    import os
    import random

    import numpy as np

    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(cfg: DictConfig, run_dir: Path) -> Prepared:
    """Read, clean, tokenize and mix the sources; rank 0 writes the files people read about them."""
    prepared = load_prepared(cfg)
    if launch_rank() == 0:  # files shared by all ranks are written once
        mix_table(prepared.mix, run_dir)
        for name, t in prepared.mix.distilled.items():  # general data in the base's own words
            console.print(f"rewrite        {name}: {distilled_line(t)}", highlight=False)
        for name, d in prepared.diversity.items():  # before any training: a set that says one line
            if d.warning:
                console.print(f"[bold yellow]warning[/]        niche source {name}: {d.warning}", highlight=False)
        write_data_files(run_dir, prepared.mix, prepared.manifest)
        length_histogram(prepared.mix, cfg.data.max_length, run_dir / "lengths.png")
        write_report(run_dir, data_sections(prepared.mix, cfg.name, prepared.manifest, prepared.diversity))
    return prepared


def prepare_summary(cfg: DictConfig, prepared: Prepared, run_dir: Path, job: dict, started: float) -> dict:
    """stage=prepare ends here: the mix on W&B (a plain run) and a short summary.json."""
    experiment = wandb_log.start_run(cfg, run_dir, job, job_type="prepare")
    if experiment is not None:
        wandb_log.log_mix(experiment, prepared.mix, run_dir)
    summary = {"stage": Stage.prepare.value, "recipe": cfg.name, "run_dir": str(run_dir),
               "manifest_sha256": prepared.manifest["manifest_sha256"],
               "train_mix_sha256": prepared.manifest["train_mix_sha256"],
               **{k: v for k, v in prepared.summary().items() if k in ("niche_diversity", "general_answers",
                                                                        "self_distilled")},
               "general_to_niche_ratio": prepared.mix.ratio, "wall_seconds": time.time() - started}
    write_summary(run_dir, summary)
    return summary


def train(cfg: DictConfig, prepared: Prepared, run_dir: Path, job: dict, ckpt: str | None, started: float) -> dict:
    """Fit with the evaluation callback; rank 0 writes summary.json, checks.csv and report.md."""
    import lightning as L

    from recipe_runner.evaluate.from_recipe import eval_checks
    from recipe_runner.train.fit import fit

    evals = eval_checks(cfg, prepared.tokenizer, prepared.mix, run_dir)
    evals.on_samples = wandb_log.log_samples  # each epoch's answers as a W&B table
    loggers = [L.pytorch.loggers.CSVLogger(save_dir=run_dir, name="logs", version="")]
    loggers += [lg for lg in [wandb_log.lightning_logger(cfg, run_dir, job)] if lg is not None]
    experiment = wandb_log.experiment_of(loggers) if launch_rank() == 0 else None
    if experiment is not None:
        wandb_log.log_mix(experiment, prepared.mix, run_dir)
    pruning = trial_pruning(cfg, evals)
    trained = fit(cfg, prepared, run_dir, evals, loggers, ckpt, [pruning] if pruning else [])
    best_epoch = trained.adapters.best_epoch
    summary = {"stage": Stage.train.value, "recipe": cfg.name, "run_dir": str(run_dir),
               **prepared.summary(), **trained.adapters.summary(run_dir), **evals.summary(best_epoch),
               **trained.summary(cfg), "precision": prepared.precision,
               "stop_reason": trained.stopped or evals.stop_reason,  # non-finite training, an evaluation rule, pruning
               **(pruning.summary() if pruning else {}),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
               "wall_seconds": time.time() - started}
    summary["eval_fraction"] = evals.seconds / summary["wall_seconds"]
    if trained.trainer.is_global_zero:
        write_summary(run_dir, summary)
        evals.write_outputs()
        stamp_checks(run_dir / "adapters", evals.history, trained.adapters.best_epoch)
        write_report(run_dir, data_sections(prepared.mix, cfg.name, prepared.manifest, prepared.diversity),
                     training_sections(run_dir, summary, evals.history, evals.baseline))
        wandb_log.log_summary(experiment, summary)
    if trained.stopped:
        kept = sorted((run_dir / "adapters").glob("epoch_*"))
        raise RecipeError(f"{trained.stopped}. Kept: " + (f"adapters/last = {kept[-1].name}, adapters/best as selected"
                          if kept else "no adapter (no epoch finished)") + f"; summary.json and report.md in "
                          f"{run_dir}. Lower train.lr (now {cfg.train.lr:g}) or check those sources' data")
    return summary
