"""What a trial is scored on, read from its summary.json (so any launcher works: the file is the
result, not a Python return value that SLURM would have to pickle back)."""

from __future__ import annotations

from recipe_runner.config.choices import SearchObjective
from recipe_runner.evaluate.metrics import ADHERENCE, COMBINED, ORDINARY_NLL_DELTA

DIRECTION = {SearchObjective.gain: "maximize", SearchObjective.forgetting: "minimize",
             SearchObjective.combined: "maximize", SearchObjective.val_loss: "minimize"}
LABEL = {SearchObjective.gain: "adherence gain over the prompt-only baseline",
         SearchObjective.forgetting: "ordinary-prompt NLL change (nats/token)",
         SearchObjective.combined: "eval/combined (gain less what was lost)",
         SearchObjective.val_loss: "held-out loss"}


def value(summary: dict, objective: SearchObjective) -> float | None:
    best = summary.get("checks_best") or {}
    if objective is SearchObjective.gain:
        return best.get(ADHERENCE.gain)
    if objective is SearchObjective.forgetting:
        return best.get(ORDINARY_NLL_DELTA.key)
    if objective is SearchObjective.combined:
        return best.get(COMBINED.key)
    return (summary.get("val_loss") or {}).get("val/loss")


def values(summary: dict, objectives: list[SearchObjective]) -> tuple[list[float] | None, str | None]:
    """The trial's values in the study's order, or None and why (a check that did not run)."""
    out = []
    for objective in objectives:
        v = value(summary, objective)
        if v is None:
            return None, (f"its summary.json has no {objective.value} ({LABEL[objective]}): the persona checks "
                          f"did not run (eval.checks, a bible) on the chosen epoch")
        out.append(float(v))
    return out, None
