"""A search trial's per-epoch report: after each checked epoch its eval/combined goes to the
study's pruning twin (study.py), and the trial stops when the pruner says so. The stop is an
ordinary early stop: the epoch's adapter is kept, summary.json says "pruned at epoch N", the job
ends without an error."""

from __future__ import annotations

import lightning as L

from recipe_runner.config.choices import SearchPruner
from recipe_runner.evaluate.metrics import ADHERENCE, COMBINED


class TrialPruning(L.Callback):
    def __init__(self, tcfg, evals):
        self.cfg, self.evals = tcfg, evals
        self.pruned_at: int | None = None
        self.reported: dict[int, float] = {}
        self._trial = None

    @property
    def trial(self):
        if self._trial is None:
            from recipe_runner.search.study import trial_pruner

            self._trial = trial_pruner(self.cfg.journal, self.cfg.study, self.cfg.pruning_number,
                                       SearchPruner(self.cfg.pruner))
        return self._trial

    def on_validation_end(self, trainer, pl_module):
        """After the evaluation callback's on_validation_epoch_end: its row for this epoch is the last."""
        if trainer.sanity_checking or not self.evals.history:
            return
        row = self.evals.history[-1]
        decision = None
        if trainer.is_global_zero and ADHERENCE.key in row and row.get(COMBINED.key) is not None:
            epoch, score = row["epoch"], float(row[COMBINED.key])
            self.trial.report(score, step=epoch)
            self.reported[epoch] = score
            last = epoch + 1 >= (trainer.max_epochs or 0)
            if not last and SearchPruner(self.cfg.pruner) is not SearchPruner.none and self.trial.should_prune():
                decision = (epoch, score)
        decision = trainer.strategy.broadcast(decision)  # every rank stops alike
        if decision is not None:
            self.pruned_at = decision[0]
            self.evals.stop(trainer, f"pruned at epoch {decision[0]}: the study's {SearchPruner(self.cfg.pruner).value} "
                                     f"pruner stopped it (epoch score {decision[1]:+.3f})")

    def summary(self) -> dict:
        return {"search": {"study": self.cfg.study, "trial": self.cfg.number, "pruned_at_epoch": self.pruned_at,
                           "epoch_scores": {str(e): v for e, v in self.reported.items()}}}
