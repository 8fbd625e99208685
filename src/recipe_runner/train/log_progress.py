"""Training progress as plain lines, for output that goes to a log file.

Lightning's progress bar redraws one terminal line; written to a file (`python run.py > run.log`,
a SLURM job, CI) it shows nothing until the epoch ends, and a CPU epoch takes ~4 minutes. When
stdout is not a terminal the runner turns the bar off and uses this instead: one line about every
fifth of an epoch (and at its end) with the loss, the niche loss, throughput and time left.

    train          epoch 0  batch 5/21  loss 1.862  niche 3.790  77 tok/s  elapsed 1:05  epoch left ~3:28
"""

from __future__ import annotations

import time

import lightning as L

from recipe_runner.console import clock, console

LINES_PER_EPOCH = 5


class LogProgress(L.Callback):
    def __init__(self):
        self.started = self.epoch_started = 0.0
        self.tokens_at_epoch = 0

    def on_train_start(self, trainer, pl_module):
        # also the epoch's start when a run resumes mid-epoch (no on_train_epoch_start then)
        self.started = self.epoch_started = time.perf_counter()
        self.tokens_at_epoch = pl_module.tokens_seen

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_started = time.perf_counter()
        self.tokens_at_epoch = pl_module.tokens_seen

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        total = trainer.num_training_batches
        done = batch_idx + 1
        if not trainer.is_global_zero or not (done == total or done % max(1, total // LINES_PER_EPOCH) == 0):
            return
        now = time.perf_counter()
        took = now - self.epoch_started
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch}", f"batch {done}/{total}"]
        for key, label in (("train/loss", "loss"), ("train/loss_niche", "niche")):
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):.3f}")
        parts.append(f"{(pl_module.tokens_seen - self.tokens_at_epoch) / max(took, 1e-9):.0f} tok/s")
        parts.append(f"elapsed {clock(now - self.started)}")
        if done < total:
            parts.append(f"epoch left ~{clock(took / done * (total - done))}")
        console.print("train          " + "  ".join(parts), markup=False)
