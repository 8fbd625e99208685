"""Every contact with Weights & Biases: whether to log, the run (Lightning logger or a plain run),
the mix and samples tables, the run summary, and finishing the run between sweep jobs.

Offline run files by default (`wandb sync` uploads them later); online only when the user's own
setting says so (`logger.wandb.mode=online`, or `auto` with WANDB_MODE=online): a shared recipe
cannot send a run anywhere (config/recipe_scan.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from recipe_runner.config.schema import WandbMode

if TYPE_CHECKING:  # datasets is heavy: the CLI imports this module for every stage (finish())
    from recipe_runner.data.mixing import Mix


def wandb_enabled(cfg: DictConfig) -> tuple[bool, bool]:
    """(enabled, online): offline files unless mode=online or (mode=auto and WANDB_MODE=online)."""
    w = cfg.logger.wandb
    mode = WandbMode(w.mode)
    online = mode is WandbMode.online or (mode is WandbMode.auto and os.environ.get("WANDB_MODE") == "online")
    return bool(w.enabled and mode is not WandbMode.disabled), online


def _run_args(cfg: DictConfig, job: dict) -> dict:
    w = cfg.logger.wandb
    return dict(project=w.project, entity=w.entity, name=job["name"], group=job["group"], tags=[cfg.name, *w.tags],
                config=OmegaConf.to_container(cfg, resolve=True))


def lightning_logger(cfg: DictConfig, run_dir: Path, job: dict):
    """The W&B logger of a training run, or None when W&B is off."""
    enabled, online = wandb_enabled(cfg)
    if not enabled:
        return None
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(save_dir=str(run_dir), offline=not online, job_type="train", **_run_args(cfg, job))


def start_run(cfg: DictConfig, run_dir: Path, job: dict, job_type: str):
    """A plain W&B run for stages without a Lightning trainer (prepare); `finish` ends it."""
    enabled, online = wandb_enabled(cfg)
    if not enabled:
        return None
    import wandb

    return wandb.init(dir=str(run_dir), mode="online" if online else "offline", job_type=job_type,
                      reinit="finish_previous", **_run_args(cfg, job))


def experiment_of(loggers: list):
    """The W&B run behind a trainer's loggers, or None."""
    from lightning.pytorch.loggers import WandbLogger

    return next((lg.experiment for lg in loggers if isinstance(lg, WandbLogger)), None)


def log_mix(experiment, m: Mix, run_dir: Path) -> None:
    """The mix table (with the cleaning counts) and the length histogram, on the run's page."""
    import wandb

    from recipe_runner.report.mix_table import MIX_COLUMNS, filters_of, mix_cells

    filters = filters_of(m)
    table = wandb.Table(columns=MIX_COLUMNS + [f"dropped {f}" for f in filters],
                        data=[mix_cells(r) + [r.cleaned.get(f, 0) for f in filters] for r in m.rows])
    payload = {"data/mix": table}
    if (run_dir / "lengths.png").exists():
        payload["data/lengths"] = wandb.Image(str(run_dir / "lengths.png"))
    experiment.log(payload)
    experiment.summary.update({"data/general_to_niche_ratio": m.ratio,
                               **{f"data/train_tokens_{r.source}": r.train_tokens for r in m.rows}})


def log_samples(loggers: list, epoch: int, samples: list[dict]) -> None:
    """One epoch's generated answers as a W&B table (`eval/samples`)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.log_text(key="eval/samples", columns=["epoch", "set", "prompt", "answer"],
                        data=[[epoch, s["set"], s["prompt"], s["answer"]] for s in samples])


def numbers(d: dict, prefix: str = "") -> dict:
    """The numeric leaves of summary.json, nested keys joined with "/" (val_loss/val/loss_alex,
    checks_best/persona/adherence): the W&B run summary, sortable in the runs table."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out |= numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)):  # bools too (stopped_early)
            out[prefix + key] = value
    return out


def log_summary(experiment, summary: dict) -> None:
    if experiment is not None:
        experiment.summary.update(numbers(summary))


def finish() -> None:
    """End the current run, if any: in a sweep the next job must start its own."""
    if "wandb" in sys.modules:
        import wandb

        wandb.finish()
