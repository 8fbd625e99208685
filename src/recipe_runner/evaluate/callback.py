"""The evaluation callback: baseline before training, checks every N epochs, selection score.

The orchestration only, the one evaluation module that imports Lightning: what is measured is
evaluate/checker.py and evaluate/checks.py, how an epoch is scored, selected and stopped is
evaluate/selection.py, and every metric's key is evaluate/metrics.py.

Before the first step it scores the prompt-only baseline (base model, whole bible as system
prompt) and the base model's loss on the held-out general sets. After each validation it
logs `eval/general_drift` (nats and %), and every `eval.every_n_epochs` runs the generation
checks and logs them as `eval/<check>`, with `baseline/<check>` beside them. `eval/combined`
ranks the epochs for adapters/best; a later epoch replaces the best only when it is better by
more than the persona noise (`beats`). An epoch whose drift exceeds `eval.max_general_drift_pct`
is rejected and stops the run; so does a parroting rate that rose `eval.parroting_patience`
epochs in a row.

Under DDP generation runs on rank 0 and its numbers are broadcast, so every rank takes the
same stop and selection decisions; the held-out losses are summed over all ranks first. Under
fsdp no rank holds the whole model, so every rank runs the same generations in lockstep (each
layer's weights are gathered from all of them); rank 0's numbers are broadcast all the same.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import time
from pathlib import Path

import lightning as L
import torch

from recipe_runner.evaluate import selection
from recipe_runner.evaluate.checker import Checker, Reference
from recipe_runner.evaluate.generation import evaluating
from recipe_runner.evaluate.metrics import (
    ADHERENCE, BASELINE, COMBINED, EVAL, GENERAL_DRIFT, GENERAL_DRIFT_PCT, GENERAL_LOSS, PARROT_RATE, REJECTED,
)
from recipe_runner.train.module import supervised_loss
from recipe_runner.console import console


@contextlib.contextmanager
def precision(trainer):
    """The autocast validation runs under (bf16-mixed ...): base and tuned numbers must share it,
    or an unchanged model would show a drift of float32-vs-bf16 rounding. The RNG state is
    restored afterwards: each DataLoader iterator draws a seed from torch's global generator, so
    evaluating would otherwise change the dropout masks of the training that follows (a run with
    checks on must train exactly like one with checks off)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), trainer.precision_plugin.forward_context():
        yield


class EvalChecks(L.Callback):
    def __init__(self, checker: Checker, ecfg, run_dir: Path, general_sources: list[str]):
        self.checker, self.cfg, self.run_dir = checker, ecfg, Path(run_dir)
        self.general_sources = general_sources
        self.baseline: dict[str, float] = {}
        self.base_general_loss: float | None = None
        self.history: list[dict] = []  # one row per validated epoch
        self.scores: dict[int, float | None] = {}  # epoch -> combined score (None = not eligible)
        self.items: dict[int, list] = {}  # epoch -> per-prompt persona adherence (rank 0)
        self.seconds = 0.0  # spent in evaluation (baseline + checks), for the cost report
        self.stop_reason: str | None = None
        self.restored = False  # from a checkpoint (train.resume)
        # (loggers, epoch, samples) -> None: who else hears each epoch's answers (the pipeline hands
        # them to report/wandb_log.py; the evaluation comes before reporting and imports none of it)
        self.on_samples = None

    STATE = ("baseline", "base_general_loss", "history", "scores", "items", "seconds", "stop_reason")

    def state_dict(self) -> dict:
        """In every checkpoint: a resumed run neither scores the baseline again nor loses the epochs
        checked before the interruption (checks.csv, the selection of adapters/best). Plain types
        only, so the checkpoint loads with weights_only."""
        ref = self.checker.reference
        return {**{k: getattr(self, k) for k in self.STATE}, "base_items": self.checker.base_items,
                "reference": None if ref is None else dataclasses.asdict(ref)}

    def load_state_dict(self, state: dict) -> None:
        for k in self.STATE:
            setattr(self, k, state[k])
        self.checker.base_items = state["base_items"]
        self.checker.reference = Reference(**state["reference"]) if state["reference"] else None
        self.restored = True

    # ------------------------------------------------------------------ before training

    def announce(self, trainer, what: str, started: float | None = None) -> None:
        """One plain line per evaluation phase: minutes of generation are not silent in a log file."""
        if trainer.is_global_zero and self.cfg.checks:
            sets = self.checker.sets
            took = ", ".join(f"{k} {v:.0f} s" for k, v in self.checker.seconds.items())
            talks = len(sets.dialogues)
            console.print(f"evaluation     {what}: {len(sets.persona)} persona prompts, {talks} "
                          f"conversation{'' if talks == 1 else 's'}, {len(sets.ordinary)} ordinary prompts, "
                          f"{len(sets.still)} checkable questions" +
                          (f" ... {time.perf_counter() - started:.0f} s ({took})" if started else " ..."), markup=False)

    def on_fit_start(self, trainer, pl_module):
        if self.restored:  # a resumed run: the baseline and the epochs so far came with the checkpoint
            self.log_baseline(trainer)
            return
        started = time.perf_counter()
        self.announce(trainer, "prompt-only baseline")
        # under DDP the other ranks wait in the broadcast below; under fsdp every rank takes part
        if trainer.is_global_zero or pl_module.sharded:
            with precision(trainer):
                self.base_general_loss = pl_module.call(lambda _: self.general_loss(trainer, pl_module, adapter=False))
                if self.cfg.checks:
                    pl_module.call(self.checker.base_reference)
                    self.baseline, samples = pl_module.call(self.checker.run, adapter=False,
                                                            judge=trainer.is_global_zero)
            if self.cfg.checks and trainer.is_global_zero:
                self.write_samples("baseline", samples)
        # every rank judges epochs (and so stops) alike
        self.baseline, self.base_general_loss = trainer.strategy.broadcast((self.baseline, self.base_general_loss))
        self.seconds += time.perf_counter() - started
        self.announce(trainer, "prompt-only baseline", started)
        self.log_baseline(trainer)

    def log_baseline(self, trainer) -> None:
        metrics = {BASELINE + k: v for k, v in self.baseline.items()}
        if self.base_general_loss is not None:
            metrics[BASELINE + GENERAL_LOSS.key] = self.base_general_loss
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)

    def general_loss(self, trainer, pl_module, adapter: bool) -> float | None:
        """Token-weighted loss on the held-out general sets (the same loaders validation uses)."""
        dm = trainer.datamodule
        names = [n for n in dm.val_names if n in self.general_sources]
        if not names:
            return None
        total, count = 0.0, 0
        loaders = dict(zip(dm.val_names, dm.val_dataloader()))
        with evaluating(pl_module.model, adapter):
            for name in names:
                for batch in loaders[name]:
                    batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    s, n = supervised_loss(pl_module.model, batch)
                    total, count = total + float(s), count + n
        return total / count if count else None

    # ------------------------------------------------------------------ every epoch

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        row: dict = {"epoch": epoch}
        general = self.epoch_general_loss(pl_module)
        if general is not None and self.base_general_loss:
            row[GENERAL_DRIFT.key] = general - self.base_general_loss
            row[GENERAL_DRIFT_PCT.key] = 100 * row[GENERAL_DRIFT.key] / self.base_general_loss
        last = epoch + 1 >= (trainer.max_epochs or 0)
        if self.cfg.checks and ((epoch + 1) % self.cfg.every_n_epochs == 0 or last):
            started = time.perf_counter()
            self.announce(trainer, f"epoch {epoch}")
            metrics = {}
            if trainer.is_global_zero or pl_module.sharded:  # rank 0 generates (fsdp: all in lockstep)
                with precision(trainer):
                    metrics, samples = pl_module.call(self.checker.run, adapter=True, judge=trainer.is_global_zero)
            if trainer.is_global_zero:  # its numbers are sent to the others
                self.items[epoch] = self.checker.items.get(ADHERENCE.name, [])  # for beats(): rank 0 selects
                self.write_samples(epoch, samples)
                if self.on_samples is not None:
                    self.on_samples(trainer.loggers, epoch, samples)
            row |= trainer.strategy.broadcast(metrics)
            self.seconds += time.perf_counter() - started
            self.announce(trainer, f"epoch {epoch}", started)
        self.judge_epoch(trainer, row)
        for key, value in row.items():
            if key != "epoch" and value is not None:
                pl_module.log(EVAL + key, float(value), sync_dist=False)
        self.history.append(row)

    def epoch_general_loss(self, pl_module) -> float | None:
        totals = pl_module.val_totals()  # over all ranks
        sums = [totals[n] for n in self.general_sources if n in totals]
        count = sum(n for _, n in sums)
        return sum(s for s, _ in sums) / count if count else None

    def judge_epoch(self, trainer, row: dict) -> None:
        """Combined score, drift threshold, parroting patience (evaluate/selection.py)."""
        epoch = row["epoch"]
        row[COMBINED.key] = selection.combined(row, self.baseline, self.cfg.select)
        rejected = selection.drift_rejects(row, self.cfg.max_general_drift_pct)
        row[REJECTED.key] = int(rejected is not None)
        self.scores[epoch] = None if rejected else row[COMBINED.key]
        if rejected:
            self.stop(trainer, rejected)
        rates = [r[PARROT_RATE.key] for r in self.history + [row] if PARROT_RATE.key in r]
        parroting = selection.parroting_rose(rates, self.cfg.parroting_patience)
        if parroting:
            self.stop(trainer, parroting)

    # ------------------------------------------------------------------ selection (train/adapters.py)

    monitor = selection.MONITOR

    @property
    def selects(self) -> bool:
        """Does the combined score pick adapters/best? Only with checks on and a bible to score against."""
        return selection.selects(self.cfg, self.checker.rubric)

    def score(self, trainer) -> float | None:
        return self.scores.get(trainer.current_epoch)

    def shown(self, score: float) -> float:
        return score

    def beats(self, epoch: int, best: int | None, score: float | None = None, best_score: float | None = None) -> bool:
        """Does `epoch` replace the current best? (selection.beats: higher by more than the persona noise)"""
        return selection.beats(epoch, best, self.scores, self.items, self.history, self.cfg.select.persona_weight)

    def stop(self, trainer, reason: str) -> None:
        trainer.should_stop = True
        self.stop_reason = reason

    # ------------------------------------------------------------------ outputs

    def write_samples(self, epoch, samples: list[dict]) -> None:
        with open(self.run_dir / "samples.jsonl", "a", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps({"epoch": epoch, **s}, ensure_ascii=False) + "\n")

    def summary(self, best_epoch: int | None) -> dict:
        """Its section of summary.json: the baseline, the chosen and the last epoch's checks, the cost."""
        return {"baseline": self.baseline,
                "base_general_loss": self.base_general_loss,
                "checks_last": self.history[-1] if self.history else {},
                "checks_best": next((r for r in self.history if r["epoch"] == best_epoch), {}),
                "eval_seconds": self.seconds,
                "min_headroom": self.cfg.min_headroom,  # the verdict's: a baseline this near the rubric's top
                "data_adherence": self.checker.data_adherence}  # ... or this near what the niche data itself scores

    def write_outputs(self) -> None:
        """checks.csv and baseline.json; called by the runner after fit (and any final validate)."""
        if not self.history:
            return
        keys = sorted({k for r in self.history for k in r} - {"epoch"})
        with open(self.run_dir / "checks.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["epoch", *keys])
            writer.writeheader()
            writer.writerows(self.history)
        (self.run_dir / "baseline.json").write_text(json.dumps(
            {"checks": self.baseline, GENERAL_LOSS.key: self.base_general_loss,
             "system_prompt": self.checker.baseline_system}, indent=2, ensure_ascii=False))
