"""Callbacks: a PEFT adapter exported every epoch, the best one marked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L


class AdapterPerEpoch(L.Callback):
    """adapters/epoch_NN/ after every validation; adapters/best/ + best.json track the monitor.

    Each folder loads with `PeftModel.from_pretrained(base, folder)`.
    """

    def __init__(self, folder: Path, monitor: str):
        self.folder, self.monitor = Path(folder), monitor
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        target = self.folder / f"epoch_{epoch:02d}"
        pl_module.model.save_pretrained(target)
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return
        score = float(score)
        if self.best_score is None or score < self.best_score:
            self.best_score, self.best_epoch = score, epoch
            best = self.folder / "best"
            shutil.rmtree(best, ignore_errors=True)
            shutil.copytree(target, best)
            (self.folder / "best.json").write_text(json.dumps(
                {"epoch": epoch, "monitor": self.monitor, "score": score, "step": trainer.global_step}, indent=2))

    def state_dict(self):
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
