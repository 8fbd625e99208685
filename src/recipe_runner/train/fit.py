"""The training stage: the model with its adapter, the Lightning module and data module, the
callbacks and the Trainer, then fit. `Trained` holds what the run's summary is made from."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from recipe_runner.config.schema import Role, Strategy
from recipe_runner.data import chat_format
from recipe_runner.data.batches import MixDataModule
from recipe_runner.data.prepared import Prepared
from recipe_runner.train.adapter_card import run_card
from recipe_runner.model.qlora import build_model
from recipe_runner.train.adapters import AdapterPerEpoch, MetricSelection, Selection, write_adapter
from recipe_runner.train.atomic import AtomicCheckpointIO, copy_folder
from recipe_runner.train.log_progress import LogProgress
from recipe_runner.train.module import NonFinite, PersonaModule
from recipe_runner.train.sharding import FSDPStrategy


def build_training(cfg: DictConfig, prepared: Prepared) -> tuple:
    """The model with its adapter, the data module and the Lightning module (also used by bench/)."""
    on_gpu = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    devices = cfg.train.devices  # [2, 3]: local rank 0 uses cuda:2
    index = devices[local_rank] if OmegaConf.is_list(devices) or isinstance(devices, list) else local_rank
    device_map = {"": int(index)} if on_gpu else None
    model = build_model(cfg.model, cfg.lora, prepared.model_path, prepared.precision, device_map,
                        sharded=Strategy(cfg.train.strategy) is Strategy.fsdp)
    tok = prepared.tokenizer
    pad_id = chat_format.pad_id(tok)
    roles = {n: Role(s.role).value for n, s in cfg.data.sources.items()}
    # a per-token "general source" mask: the per-role training loss, and kl_to_base
    general = {n for n, r in roles.items() if r == Role.general.value}
    dm = MixDataModule(prepared.mix, pad_id, cfg.data.max_length, cfg.data.packing,
                       cfg.train.batch_size, cfg.train.seed, cfg.train.num_workers, general_sources=general)
    module = PersonaModule(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_ratio, dm.val_names, roles,
                           loss=cfg.train.loss, eaft_top_k=cfg.train.eaft_top_k, kl_to_base=cfg.train.kl_to_base)
    return model, dm, module


def callbacks(cfg: DictConfig, run_dir: Path, evals: L.Callback, selection: Selection, card: dict,
              extra: list[L.Callback]) -> list[L.Callback]:
    t = cfg.train
    out = [
        evals,
        AdapterPerEpoch(run_dir / "adapters", selection, card),
        L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                            every_n_train_steps=t.checkpoint_every_n_steps or None),
        L.pytorch.callbacks.EarlyStopping(monitor=t.early_stopping.monitor, mode="min",
                                          patience=t.early_stopping.patience, min_delta=t.early_stopping.min_delta,
                                          check_on_train_epoch_end=False),  # only after validation
        L.pytorch.callbacks.LearningRateMonitor(logging_interval="step"),
        *extra,  # a search trial's pruning report (search/pruning.py)
    ]
    if not sys.stdout.isatty():  # a log file: plain progress lines instead of a bar that shows nothing until the end
        out.append(LogProgress())
    return out


def trainer_for(cfg: DictConfig, run_dir: Path, precision: str, loggers: list, cbs: list) -> L.Trainer:
    t, e = cfg.train, cfg.eval
    strategy = Strategy(t.strategy)
    return L.Trainer(
        default_root_dir=run_dir, max_epochs=t.max_epochs, max_steps=t.max_steps,
        accumulate_grad_batches=t.grad_accum, gradient_clip_val=t.grad_clip or None,
        precision=precision, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=FSDPStrategy() if strategy is Strategy.fsdp else strategy.value,
        logger=loggers, callbacks=cbs, num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],  # last.ckpt is whole or absent, whatever kills the run
        check_val_every_n_epoch=e.val_every_n_epochs, limit_val_batches=e.limit_val_batches,
        log_every_n_steps=cfg.logger.log_every_n_steps, enable_model_summary=False,
        enable_progress_bar=sys.stdout.isatty(),
        reload_dataloaders_every_n_epochs=1,  # each epoch: its own general draw and packing
    )


@dataclass
class Trained:
    trainer: L.Trainer
    module: PersonaModule
    datamodule: MixDataModule
    adapters: AdapterPerEpoch
    fit_seconds: float
    resumed_from: str | None
    stopped: str | None = None  # why training stopped before its end (a non-finite loss or gradient)

    def summary(self, cfg: DictConfig) -> dict:
        """The trainer's section of summary.json (every rank calls it: the token counts are summed)."""
        tr = self.trainer
        return {
            "val_loss": {k: float(v) for k, v in tr.callback_metrics.items() if k.startswith("val/")},
            "epochs_run": tr.current_epoch,
            "global_step": tr.global_step,
            "stopped_early": bool(tr.should_stop and tr.current_epoch < cfg.train.max_epochs),
            **self.module.summary(tr),
            "strategy": Strategy(cfg.train.strategy).value,
            "world_size": tr.world_size,
            "fit_seconds": self.fit_seconds,
            "train_mix_sha256_per_epoch": {str(e): h for e, h in sorted(self.datamodule.epoch_hashes.items())},
            "resumed_from": self.resumed_from,
        }


def fit(cfg: DictConfig, prepared: Prepared, run_dir: Path, evals, loggers: list, ckpt: str | None,
        extra: list[L.Callback] = ()) -> Trained:
    """Train with the evaluation callback `evals` (the selection too, when it `selects`); every
    adapter saved carries the run's card (persona.json)."""
    model, dm, module = build_training(cfg, prepared)
    selection = evals if evals.selects else MetricSelection(cfg.train.early_stopping.monitor)
    card = run_card(cfg, prepared.tokenizer, prepared.model_path)
    cbs = callbacks(cfg, run_dir, evals, selection, card, list(extra))
    trainer = trainer_for(cfg, run_dir, prepared.precision, loggers, cbs)
    if ckpt and trainer.is_global_zero:
        carry_adapters(Path(ckpt), run_dir / "adapters")
    started = time.time()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    except NonFinite as exc:  # the weights after it are poison: adapters/last is the last good epoch
        seconds = time.time() - started
        if trainer.is_global_zero:
            keep_last_good(run_dir / "adapters")
        return Trained(trainer, module, dm, cbs[1], seconds, ckpt, stopped=f"non-finite training: {exc}")
    seconds = time.time() - started
    if "val/loss" not in trainer.callback_metrics:  # max_steps ended the run before any validation
        trainer.validate(module, datamodule=dm, verbose=False)
    write_adapter(module.model, run_dir / "adapters" / "last", trainer.is_global_zero, card,  # every rank: fsdp gathers
                  epoch=None, step=trainer.global_step, run_dir=str(run_dir))
    return Trained(trainer, module, dm, cbs[1], seconds, ckpt)


def keep_last_good(adapters: Path) -> None:
    """adapters/last := the newest finished epoch's adapter (none when the first epoch failed)."""
    epochs = sorted(adapters.glob("epoch_*"))
    if epochs:
        copy_folder(epochs[-1], adapters / "last")


def carry_adapters(ckpt: Path, adapters: Path) -> None:
    """A resumed run's folder starts with the epochs (and best) its checkpoint's run had saved, so
    the finished run holds every epoch's adapter, as an uninterrupted one does (an epoch it
    trains again is written again)."""
    earlier = ckpt.parent.parent / "adapters"  # <run>/checkpoints/last.ckpt
    if ckpt.parent.name != "checkpoints" or not earlier.is_dir():
        return
    for folder in sorted(earlier.glob("epoch_*")) + [earlier / "best"]:
        if folder.is_dir():
            copy_folder(folder, adapters / folder.name)
    if (earlier / "best.json").exists():
        shutil.copy2(earlier / "best.json", adapters / "best.json")
