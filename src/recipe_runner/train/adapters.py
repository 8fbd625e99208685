"""A PEFT adapter exported every epoch, the best one (by a `Selection`) copied to adapters/best."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Protocol

import lightning as L

from recipe_runner.train.adapter_card import write_card
from recipe_runner.train.atomic import atomic_file, copy_folder, partial_of, publish_folder
from recipe_runner.train.sharding import save_adapter


def write_adapter(model, target: Path, is_global_zero: bool, card: dict | None = None, **fields) -> None:
    """Every rank calls it (under fsdp saving gathers); rank 0 writes `target/` whole: the weights,
    the adapter config and the card appear together or not at all (train/atomic.py)."""
    partial = partial_of(Path(target))
    if is_global_zero:
        shutil.rmtree(partial, ignore_errors=True)  # a killed run's leftover
    save_adapter(model, partial, is_global_zero)
    if is_global_zero:
        if card is not None:
            write_card(partial, card, **fields)
        publish_folder(partial, Path(target))


class Selection(Protocol):
    """What picks adapters/best: the evaluation's combined score (evaluate/callback.py) or a metric."""

    monitor: str  # its name, as best.json and summary.json show it

    def score(self, trainer) -> float | None:  # higher is better; None = this epoch is not eligible
        ...

    def beats(self, epoch: int, best_epoch: int, score: float, best_score: float) -> bool:
        ...

    def shown(self, score: float) -> float:  # the score as the user reads it
        ...


class MetricSelection:
    """A logged lower-is-better metric (val/loss): negated, so higher is better."""

    def __init__(self, monitor: str):
        self.monitor = monitor

    def score(self, trainer) -> float | None:
        value = trainer.callback_metrics.get(self.monitor)
        return None if value is None else -float(value)

    def beats(self, epoch: int, best_epoch: int, score: float, best_score: float) -> bool:
        return score > best_score

    def shown(self, score: float) -> float:
        return -score


class AdapterPerEpoch(L.Callback):
    """adapters/epoch_NN/ after every validation; adapters/best/ + best.json track the selection.

    Runs in on_validation_end, after every callback's on_validation_epoch_end (where the
    evaluation scores the epoch), so the order of the callbacks does not matter. Each folder
    loads with `PeftModel.from_pretrained(base, folder)`.
    """

    def __init__(self, folder: Path, selection: Selection, card: dict | None = None):
        self.folder, self.selection, self.card = Path(folder), selection, card  # card: train/adapter_card.py
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    @property
    def monitor(self) -> str:
        return self.selection.monitor

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        target = self.folder / f"epoch_{epoch:02d}"
        write_adapter(pl_module.model, target, trainer.is_global_zero, self.card,  # every rank: fsdp gathers
                      epoch=epoch, run_dir=str(self.folder.parent))
        if not trainer.is_global_zero:
            return
        score = self.selection.score(trainer)
        if score is None:
            return
        better = self.best_score is None or self.selection.beats(epoch, self.best_epoch, score, self.best_score)
        if better:
            self.best_score, self.best_epoch = score, epoch
            copy_folder(target, self.folder / "best")
            with atomic_file(self.folder / "best.json") as fh:
                fh.write(json.dumps({"epoch": epoch, "selected_by": self.monitor, "score": self.shown(score),
                                     "step": trainer.global_step}, indent=2).encode())

    def shown(self, score: float) -> float:
        return self.selection.shown(score)

    def summary(self, run_dir: Path) -> dict:
        """Its section of summary.json: which epoch became adapters/best, by what."""
        return {"best_epoch": self.best_epoch,
                "best_score": self.shown(self.best_score) if self.best_score is not None else None,
                "monitor": self.monitor,  # what chose adapters/best: eval/combined or the early-stopping metric
                "best_adapter": str(Path(run_dir) / "adapters" / ("best" if self.best_epoch is not None else "last"))}

    def state_dict(self):
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
