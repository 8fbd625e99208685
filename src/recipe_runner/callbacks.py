"""Callbacks: a PEFT adapter exported every epoch, the best one marked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import lightning as L

from .sharding import save_adapter


class AdapterPerEpoch(L.Callback):
    """adapters/epoch_NN/ after every validation; adapters/best/ + best.json track the selection.

    The selection is a logged metric (lower is better: val/loss) or, with `score`, a function of
    the trainer returning the epoch's score or None when the epoch is not eligible (higher is
    better: eval/combined). Each folder loads with `PeftModel.from_pretrained(base, folder)`.
    """

    def __init__(self, folder: Path, monitor: str, score: Callable | None = None, beats: Callable | None = None):
        self.folder, self.monitor, self.score, self.beats = Path(folder), monitor, score, beats
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def epoch_score(self, trainer) -> float | None:
        """Higher is better: a lower-is-better monitor is negated."""
        if self.score is not None:
            return self.score(trainer)
        value = trainer.callback_metrics.get(self.monitor)
        return None if value is None else -float(value)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        target = self.folder / f"epoch_{epoch:02d}"
        save_adapter(pl_module.model, target, trainer.is_global_zero)  # every rank: under fsdp a gathering
        if not trainer.is_global_zero:
            return
        score = self.epoch_score(trainer)
        if score is None:
            return
        if self.best_score is None:
            better = True
        else:
            better = self.beats(epoch, self.best_epoch) if self.beats else score > self.best_score
        if better:
            self.best_score, self.best_epoch = score, epoch
            best = self.folder / "best"
            shutil.rmtree(best, ignore_errors=True)
            shutil.copytree(target, best)
            (self.folder / "best.json").write_text(json.dumps(
                {"epoch": epoch, "selected_by": self.monitor, "score": self.shown(score),
                 "step": trainer.global_step}, indent=2))

    def shown(self, score: float) -> float:
        """The score as the user reads it (val/loss positive again)."""
        return score if self.score is not None else -score

    def state_dict(self):
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
