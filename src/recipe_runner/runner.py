"""One run: checks -> data -> model -> Lightning fit -> summary. Called once per Hydra job."""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from . import checks
from .batches import MixDataModule
from .callbacks import AdapterPerEpoch
from .embedded import resolve_model_path
from .eval_callback import EvalChecks
from .evaluation import Checker
from .errors import RecipeError
from .manifest import build_manifest, write_data_files
from .launch import launch_rank
from .log_progress import LogProgress
from .mixing import Mix
from .module import PersonaModule
from .prepare import prepare_data
from .qlora import build_model, resolve_precision
from .compare import compare
from .data_report import log_to_wandb, write_report
from .report import mix_table, write_summary
from .run_report import append_training
from .schema import Role, SystemPrompt, drop_null_sources
from .sharding import FSDPStrategy, local_weight_mb, save_adapter
from .templates import load_bible, render_persona


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


def find_checkpoint(resume: str | None, cfg: DictConfig, run_dir: Path) -> str | None:
    if resume is None:
        return None
    if resume == "last":
        runs = Path(cfg.paths.output_dir) / "runs" / cfg.name
        found = sorted((p for p in runs.glob("*/checkpoints/last.ckpt") if run_dir not in p.parents),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise RecipeError(f"train.resume=last: no checkpoints/last.ckpt under {runs}")
        return str(found[-1])
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.exists():
        raise RecipeError(f"train.resume={resume}: {path} does not exist")
    return str(path)


@dataclass
class DataParts:
    model_path: str  # a folder or hub id from_pretrained can open
    tokenizer: object
    data: Mix
    precision: str  # resolved Lightning precision (auto -> bf16-mixed / 16-mixed / 32-true)


def load_data(cfg: DictConfig) -> DataParts:
    """Everything before the weights: model path (converting an embedded model once), tokenizer, mix."""
    from transformers import AutoTokenizer

    model_path = resolve_model_path(cfg.model.name_or_path, cfg.paths.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg.model.revision, trust_remote_code=False)
    data = prepare_data(cfg, tokenizer)
    return DataParts(model_path, tokenizer, data, resolve_precision(cfg.train.precision, cfg.train.accelerator))


def build_training(cfg: DictConfig, parts: DataParts) -> tuple:
    """The model with its adapter, the data module and the Lightning module (also used by bench/)."""
    on_gpu = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    devices = cfg.train.devices  # [2, 3]: local rank 0 uses cuda:2
    index = devices[local_rank] if OmegaConf.is_list(devices) or isinstance(devices, list) else local_rank
    device_map = {"": int(index)} if on_gpu else None
    model = build_model(cfg.model, cfg.lora, parts.model_path, parts.precision, device_map,
                        sharded=cfg.train.strategy == "fsdp")
    tok = parts.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    roles = {n: Role(s.role).value for n, s in cfg.data.sources.items()}
    # a per-token "general source" mask: the per-role training loss, and kl_to_base
    general = {n for n, r in roles.items() if r == Role.general.value}
    dm = MixDataModule(parts.data, pad_id, cfg.data.max_length, cfg.data.packing,
                       cfg.train.batch_size, cfg.train.seed, cfg.train.num_workers, general_sources=general)
    module = PersonaModule(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_ratio, dm.val_names, roles,
                           loss=cfg.train.loss, eaft_top_k=cfg.train.eaft_top_k, kl_to_base=cfg.train.kl_to_base)
    return model, dm, module


def wandb_enabled(cfg: DictConfig) -> tuple[bool, bool]:
    """(enabled, online): offline files unless mode=online or (mode=auto and WANDB_MODE=online)."""
    w = cfg.logger.wandb
    online = w.mode == "online" or (w.mode == "auto" and os.environ.get("WANDB_MODE") == "online")
    return bool(w.enabled and w.mode != "disabled"), online


def make_eval_checks(cfg: DictConfig, parts: DataParts, run_dir: Path) -> EvalChecks:
    """The checker (prompt sets, bible rubric, mined parroting n-grams) inside its callback."""
    bible = load_bible(cfg.template.persona.bible)
    persona = any(SystemPrompt(s.system) is SystemPrompt.persona for s in cfg.data.sources.values())
    system = render_persona(cfg.template) if persona else None
    roles = {n: Role(s.role) for n, s in cfg.data.sources.items()}
    answers = [m["content"] for n, plan in parts.data.plans.items() if roles[n] is Role.niche
               for msgs in plan.pool["messages"] for m in msgs if m["role"] == "assistant"]
    long_heldout = []
    if cfg.eval.heldout_dialogues:
        for n, val in parts.data.val.items():
            if roles[n] is Role.niche:
                for msgs in val["messages"]:
                    turns = [m["content"] for m in msgs if m["role"] == "user"]
                    if len(turns) >= cfg.eval.heldout_dialogues:
                        long_heldout.append(turns)
    checker = Checker(cfg.eval, parts.tokenizer, bible, system, answers, long_heldout)
    return EvalChecks(checker, cfg.eval, run_dir, [n for n, r in roles.items() if r is Role.general])


def make_loggers(cfg: DictConfig, run_dir: Path, job: dict) -> list:
    loggers = [L.pytorch.loggers.CSVLogger(save_dir=run_dir, name="logs", version="")]
    enabled, online = wandb_enabled(cfg)
    if enabled:
        from lightning.pytorch.loggers import WandbLogger

        w = cfg.logger.wandb
        loggers.append(WandbLogger(
            project=w.project, entity=w.entity, name=job["name"], group=job["group"], save_dir=str(run_dir),
            offline=not online, tags=[cfg.name, *w.tags], job_type="train",
            config=OmegaConf.to_container(cfg, resolve=True),
        ))
    return loggers


def start_wandb(cfg: DictConfig, run_dir: Path, job: dict, job_type: str):
    """A plain W&B run for stages without a Lightning trainer (prepare); finished by the CLI."""
    enabled, online = wandb_enabled(cfg)
    if not enabled:
        return None
    import wandb

    w = cfg.logger.wandb
    return wandb.init(project=w.project, entity=w.entity, name=job["name"], group=job["group"], dir=str(run_dir),
                      mode="online" if online else "offline", tags=[cfg.name, *w.tags], job_type=job_type,
                      config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")


def run(cfg: DictConfig, run_dir: Path, job: dict) -> dict:
    started = time.time()
    drop_null_sources(cfg)
    checks.check(cfg)
    if cfg.stage == "compare":  # reads a finished sweep; nothing is trained
        summary = compare(cfg.sweep_dir)
        write_summary(run_dir, summary)
        return summary
    L.seed_everything(cfg.train.seed, verbose=False)
    ckpt = find_checkpoint(cfg.train.resume, cfg, run_dir)

    data_parts = load_data(cfg)  # DDP ranks > 0 find rank 0's data in the cache
    manifest = build_manifest(cfg, data_parts.data, data_parts.model_path)
    rank_zero = launch_rank() == 0  # files shared by all ranks are written once
    if rank_zero:
        mix_table(data_parts.data, run_dir)
        write_data_files(run_dir, data_parts.data, manifest)
        write_report(data_parts.data, run_dir, cfg.name, manifest, cfg.data.max_length)
    if cfg.stage == "prepare":  # data only: no weights are loaded
        wandb_run = start_wandb(cfg, run_dir, job, job_type="prepare")
        if wandb_run is not None:
            log_to_wandb(wandb_run, data_parts.data, run_dir)
        summary = {"stage": "prepare", "recipe": cfg.name, "run_dir": str(run_dir),
                   "manifest_sha256": manifest["manifest_sha256"], "train_mix_sha256": manifest["train_mix_sha256"],
                   "general_to_niche_ratio": data_parts.data.ratio, "wall_seconds": time.time() - started}
        write_summary(run_dir, summary)
        return summary
    model, dm, module = build_training(cfg, data_parts)
    data, precision = data_parts.data, data_parts.precision

    monitor = cfg.train.early_stopping.monitor
    evals = make_eval_checks(cfg, data_parts, run_dir)
    combined = cfg.eval.select.metric == "combined" and evals.checker.rubric is not None and cfg.eval.checks
    adapters = AdapterPerEpoch(run_dir / "adapters", "eval/combined" if combined else monitor,
                               score=(lambda tr: evals.scores.get(tr.current_epoch)) if combined else None,
                               beats=evals.beats if combined else None)
    callbacks = [
        evals,  # before AdapterPerEpoch: the epoch's score must exist when the adapter is saved
        adapters,
        L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                            every_n_train_steps=cfg.train.checkpoint_every_n_steps or None),
        L.pytorch.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=cfg.train.early_stopping.patience,
                                          min_delta=cfg.train.early_stopping.min_delta,
                                          check_on_train_epoch_end=False),  # only after validation
        L.pytorch.callbacks.LearningRateMonitor(logging_interval="step"),
    ]
    to_terminal = sys.stdout.isatty()
    if not to_terminal:  # a log file: plain progress lines instead of a bar that shows nothing until the end
        callbacks.append(LogProgress())
    loggers = make_loggers(cfg, run_dir, job)
    for logger in loggers:
        if logger.__class__.__name__ == "WandbLogger" and rank_zero:
            log_to_wandb(logger.experiment, data, run_dir)
    trainer = L.Trainer(
        default_root_dir=run_dir, max_epochs=cfg.train.max_epochs, max_steps=cfg.train.max_steps,
        accumulate_grad_batches=cfg.train.grad_accum, gradient_clip_val=cfg.train.grad_clip or None,
        precision=precision, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes, strategy=FSDPStrategy() if cfg.train.strategy == "fsdp" else cfg.train.strategy,
        logger=loggers, callbacks=callbacks, num_sanity_val_steps=0,
        check_val_every_n_epoch=cfg.eval.val_every_n_epochs, limit_val_batches=cfg.eval.limit_val_batches,
        log_every_n_steps=cfg.logger.log_every_n_steps, enable_model_summary=False, enable_progress_bar=to_terminal,
        reload_dataloaders_every_n_epochs=1,  # each epoch: its own general draw and packing
    )
    fit_started = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    fit_seconds = time.time() - fit_started
    if "val/loss" not in trainer.callback_metrics:  # max_steps ended the run before any validation
        trainer.validate(module, datamodule=dm, verbose=False)
    save_adapter(module.model, run_dir / "adapters" / "last", trainer.is_global_zero)  # every rank: fsdp gathers

    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    # every rank trains on its own rows: the run's throughput is the sum over ranks
    counts = torch.tensor([float(module.tokens_seen), float(module.supervised_seen),
                           float(module.role_seen.get("niche", 0))])
    tokens, supervised, niche = (int(x) for x in trainer.strategy.reduce(counts, reduce_op="sum").tolist())
    summary = {
        "stage": "train",
        "recipe": cfg.name,
        "run_dir": str(run_dir),
        "manifest_sha256": manifest["manifest_sha256"],
        "best_epoch": adapters.best_epoch,
        "best_score": adapters.shown(adapters.best_score) if adapters.best_score is not None else None,
        "monitor": adapters.monitor,  # what chose adapters/best: eval/combined or the early-stopping metric
        "baseline": evals.baseline,
        "base_general_loss": evals.base_general_loss,
        "checks_last": evals.history[-1] if evals.history else {},
        "checks_best": next((r for r in evals.history if r["epoch"] == adapters.best_epoch), {}),
        "stop_reason": evals.stop_reason,
        "eval_seconds": evals.seconds,
        "best_adapter": str(run_dir / "adapters" / ("best" if adapters.best_epoch is not None else "last")),
        "val_loss": val,
        "epochs_run": trainer.current_epoch,
        "global_step": trainer.global_step,
        "stopped_early": bool(trainer.should_stop and trainer.current_epoch < cfg.train.max_epochs),
        "trained_tokens": tokens,
        "supervised_tokens": supervised,
        "supervised_niche_tokens": niche,  # how much of the voice the run actually trained on
        "tokens_per_second": tokens / module.train_seconds if module.train_seconds else 0.0,
        "strategy": cfg.train.strategy,
        "world_size": trainer.world_size,
        "fit_seconds": fit_seconds,
        "mix": {r.source: {"train_tokens": r.train_tokens, "share": r.share} for r in data.rows},
        "general_to_niche_ratio": data.ratio,
        "train_mix_sha256_per_epoch": {str(e): h for e, h in sorted(dm.epoch_hashes.items())},
        "precision": precision,
        "weights_mb_per_rank": local_weight_mb(module.model, module.root),  # fsdp: this rank's shard
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "resumed_from": ckpt,
        "wall_seconds": time.time() - started,
    }
    summary["eval_fraction"] = evals.seconds / summary["wall_seconds"]
    if trainer.is_global_zero:
        write_summary(run_dir, summary)
        evals.write_outputs()
        append_training(run_dir, summary, evals.history, evals.baseline)
        for logger in loggers:
            if hasattr(logger, "experiment") and logger.__class__.__name__ == "WandbLogger":
                logger.experiment.summary.update(numbers(summary))
    return summary
