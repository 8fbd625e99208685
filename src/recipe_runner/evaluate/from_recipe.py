"""The evaluation of one run, built from its recipe and data: prompt sets, the bible rubric, the
training answers parroting is mined from, and the long held-out dialogues replayed for drift."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from recipe_runner.config.schema import Role, SystemPrompt
from recipe_runner.data.mixing import Mix
from recipe_runner.data.bible import load_bible
from recipe_runner.evaluate.callback import EvalChecks
from recipe_runner.evaluate.checker import Checker


def training_answers(cfg: DictConfig, mix: Mix) -> list[str]:
    """Every assistant turn of the niche training pool: what a parroting model would copy."""
    roles = {n: Role(s.role) for n, s in cfg.data.sources.items()}
    return [m["content"] for n, plan in mix.plans.items() if roles[n] is Role.niche
            for msgs in plan.pool["messages"] for m in msgs if m["role"] == "assistant"]


def long_heldout_dialogues(cfg: DictConfig, mix: Mix) -> list[list[str]]:
    """User turns of held-out niche dialogues with at least eval.heldout_dialogues of them (0 = none)."""
    need = cfg.eval.heldout_dialogues
    if not need:
        return []
    roles = {n: Role(s.role) for n, s in cfg.data.sources.items()}
    out = []
    for n, val in mix.val.items():
        if roles[n] is Role.niche:
            for msgs in val["messages"]:
                turns = [m["content"] for m in msgs if m["role"] == "user"]
                if len(turns) >= need:
                    out.append(turns)
    return out


def eval_checks(cfg: DictConfig, tokenizer, mix: Mix, run_dir: Path) -> EvalChecks:
    """The checker inside its Lightning callback."""
    bible = load_bible(cfg.template.persona.bible)
    persona = any(SystemPrompt(s.system) is SystemPrompt.persona for s in cfg.data.sources.values())
    system = bible.system_prompt(cfg.template.persona.system_prompt) if persona and bible else None
    checker = Checker(cfg.eval, tokenizer, bible, system, training_answers(cfg, mix), long_heldout_dialogues(cfg, mix))
    general = [n for n, s in cfg.data.sources.items() if Role(s.role) is Role.general]
    return EvalChecks(checker, cfg.eval, run_dir, general)
