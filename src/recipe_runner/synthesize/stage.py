"""stage=synthesize: from the recipe's bible to training dialogues it can read as they are.

    plan (situations.py)  ->  synopses  ->  dialogues (generation.py)  ->  bible check (checks.py)
                          ->  accepted.jsonl / rejected.jsonl / report (report/synth_report.py)

Everything lands in synth.out (store.py), each answer as it arrives: a rerun of the same command
continues an interrupted or budget-stopped run. The generator (a user setting) is an
OpenAI-compatible endpoint with its key from an environment variable, or a local model. The
check and the report are rebuilt from the logs at the end of every run, also a stopped one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recipe_runner.config.choices import DialogueMode
from recipe_runner.console import console
from recipe_runner.data.bible import Bible, load_bible
from recipe_runner.errors import RecipeError
from recipe_runner.report.synth_report import diversity, length_plot, report_markdown, voice
from recipe_runner.synthesize.budget import Budget
from recipe_runner.synthesize.checks import REASONS, Checks, Verdict, reason_key
from recipe_runner.synthesize.generation import Generation
from recipe_runner.synthesize.prompts import Prompts
from recipe_runner.synthesize.references import load_references
from recipe_runner.synthesize.requests import BudgetExhausted, GeneratorUnavailable
from recipe_runner.synthesize.situations import plan, topics_of
from recipe_runner.synthesize.store import SynthFolder, write_atomic


class SavedBudget(Budget):
    """The budget, written to synth.out/budget.json on every change: a kill never forgets spending.
    Worker threads reserve and settle at once; one lock keeps the writes whole and in order."""

    def __init__(self, max_requests, max_tokens, spent: tuple[int, int], folder: SynthFolder):
        super().__init__(max_requests, max_tokens, *spent)
        self.folder, self.saving = folder, threading.Lock()

    def reserve(self, tokens: int) -> bool:
        with self.saving:
            ok = super().reserve(tokens)
            if ok:
                self.folder.save_spent(self.spent_requests, self.spent_tokens)
            return ok

    def settle(self, reserved: int, actual: int | None) -> None:
        with self.saving:
            super().settle(reserved, actual)
            self.folder.save_spent(self.spent_requests, self.spent_tokens)


def plan_settings(cfg: DictConfig, prompts: Prompts) -> dict:
    """What a folder's dialogues were made from; a rerun that changes one of these is refused.
    Counts (synth.synopses, dialogues_per_synopsis) may grow: the plan is extended, not changed."""
    s = cfg.synth
    return {"recipe": cfg.name, "templates_and_bible": prompts.sha(), "seed": s.seed, "mode": DialogueMode(s.mode).value,
            "turns": list(s.turns), "long_share": s.long_share, "long_turns": s.long_turns,
            "situations": OmegaConf.to_container(s.situations)}


def open_generator(cfg: DictConfig, folder: SynthFolder):
    g, s = cfg.synth.generator, cfg.synth
    budget = SavedBudget(g.max_requests, g.max_tokens, folder.spent(), folder)
    if g.base_url:
        from recipe_runner.synthesize.endpoint import EndpointGenerator

        key = os.environ.get(g.api_key_env) if g.api_key_env else None
        return EndpointGenerator(g.base_url, g.model, key, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                                 budget=budget, max_concurrent=g.max_concurrent, timeout_s=g.timeout_s,
                                 retries=g.retries, backoff_s=g.backoff_s)
    from recipe_runner.model.embedded import resolve_model_path
    from recipe_runner.synthesize.local import LocalGenerator

    path = resolve_model_path(g.model or cfg.model.name_or_path, cfg.paths.cache_dir)
    return LocalGenerator(path, temperature=s.temperature, top_p=s.top_p, seed=s.seed, budget=budget,
                          batch_size=g.batch_size)


def judge_of(cfg: DictConfig, bible: Bible, folder: SynthFolder):
    """The LLM judge over a dialogue's persona turns, each score paid for once (judge.jsonl)."""
    if cfg.synth.check.judge_min_score is None:
        return None
    from recipe_runner.evaluate.judge import judge_scores

    def judge(d: dict) -> float | None:
        if d["id"] not in folder.judge.rows:
            m = d["messages"]
            pairs = [(m[i - 1]["content"], m[i]["content"]) for i in range(1, len(m), 2)]
            scores = [x for x in judge_scores(cfg.eval.judge, bible.as_dict(), pairs) if x is not None]
            folder.judge.add({"id": d["id"], "scores": scores, "mean": sum(scores) / len(scores) if scores else None})
        return folder.judge.rows[d["id"]]["mean"]

    return judge


def synthesize(cfg: DictConfig, run_dir: Path) -> dict:
    started = time.time()
    bible = load_bible(cfg.template.persona.bible)
    situations = plan(cfg.synth, bible)
    prompts = Prompts(cfg.synth.prompts, bible, bible.system_prompt(cfg.template.persona.system_prompt))
    folder = SynthFolder(cfg.synth.out, plan_settings(cfg, prompts))
    refs = load_references(cfg, cfg.synth.check.near_dup_threshold, folder.path) if cfg.synth.check.against_data else None
    checks = Checks(cfg.synth.check, bible, refs, judge_of(cfg, bible, folder))
    planned = sum(len(s.turns) for s in situations)
    cut = any(log.cut for log in (folder.synopses, folder.turns, folder.dialogues))
    console.print(f"synthesize  {len(situations)} situations, {planned} dialogues ({DialogueMode(cfg.synth.mode).value}) "
                  f"into {folder.path}; already there: {len(folder.synopses.rows)} synopses, "
                  f"{len(folder.dialogues.rows)} dialogues" + (" (a partial last line was cut off)" if cut else ""))
    generator = open_generator(cfg, folder)
    console.print(f"synthesize  generator {generator.name}; budget: {generator.budget.left()}")
    stopped = failure = None
    try:
        Generation(cfg.synth, situations, prompts, folder, generator, checks, bible.name).run()
    except BudgetExhausted:
        stopped = (f"the budget is spent ({generator.budget.spent_requests:,} requests, {generator.budget.spent_tokens:,} "
                   f"tokens); raise synth.generator.max_requests / max_tokens and rerun to continue")
    except GeneratorUnavailable as exc:
        stopped = failure = str(exc)
    finally:
        generator.close()
    report = check_and_report(cfg, situations, folder, checks, bible, generator, stopped, started, prompts.sha())
    folder.close()
    if failure:
        raise RecipeError(f"{failure} (everything generated so far is kept in {folder.path}; rerun to continue)")
    return report


def check_and_report(cfg, situations, folder: SynthFolder, checks: Checks, bible: Bible, generator, stopped,
                     started: float, template_sha: str) -> dict:
    sit_of = {did: s for s in situations for did in s.dialogue_ids()}
    dialogues = [d for did, d in sorted(folder.dialogues.rows.items()) if did in sit_of]
    verdicts = checks.select(dialogues, {d["id"]: sit_of[d["id"]].language for d in dialogues})
    accepted, rejected = [], []
    for d, v in zip(dialogues, verdicts):
        sit = sit_of[d["id"]]
        provenance = {"id": d["id"], "synopsis": folder.synopses.rows[sit.id]["text"], "situation": sit.as_dict(),
                      "generator": d["generator"], "template_sha": d["template_sha"], "scores": v.scores}
        if v.accepted:
            accepted.append({"messages": d["messages"], "provenance": provenance})
        else:
            rejected.append({"id": d["id"], "reason": reason_key(v.reasons[0]), "reasons": v.reasons,
                             "messages": d["messages"], "provenance": provenance})
    folder.write_jsonl("accepted.jsonl", accepted)
    folder.write_jsonl("rejected.jsonl", rejected)
    report = build_report(cfg, situations, folder, dialogues, verdicts, bible, generator, stopped, started,
                          template_sha)
    report["lengths_png"] = bool(length_plot([a | {"id": a["provenance"]["id"]} for a in accepted],
                                             folder.path / "lengths.png"))
    write_atomic(folder.path / "report.md", report_markdown(report))
    write_atomic(folder.path / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def build_report(cfg, situations, folder, dialogues, verdicts: list[Verdict], bible: Bible, generator, stopped,
                 started, template_sha: str) -> dict:
    topic_of = {did: s.topic for s in situations for did in s.dialogue_ids()}
    topics = topics_of(cfg.synth.situations, bible)
    kept = [d for d, v in zip(dialogues, verdicts) if v.accepted]
    any_reason = {k: 0 for k in REASONS}
    first: dict[str, int] = {}
    for v in verdicts:
        for key in {reason_key(r) for r in v.reasons}:
            any_reason[key] = any_reason.get(key, 0) + 1
        if v.reasons:
            first[reason_key(v.reasons[0])] = first.get(reason_key(v.reasons[0]), 0) + 1
    synopses = [folder.synopses.rows[s.id] for s in situations if s.id in folder.synopses.rows]
    g = cfg.synth.generator
    return {
        "name": cfg.name, "out": str(folder.path), "generator": generator.name, "mode": DialogueMode(cfg.synth.mode).value,
        "seed": cfg.synth.seed, "template_sha": template_sha,
        "stopped": stopped, "seconds": round(time.time() - started, 1),
        "counts": {"situations": len(situations), "synopses": len(synopses),
                   "synopses_failed": sum(1 for r in synopses if r["error"]),
                   "dialogues_planned": sum(len(s.turns) for s in situations), "dialogues": len(dialogues),
                   "stopped_early": sum(1 for d in dialogues if d.get("stopped_early")),
                   "accepted": len(kept), "rejected": len(dialogues) - len(kept)},
        "rejected_any": {k: v for k, v in any_reason.items() if v}, "rejected_first": first,
        "diversity": {"generated": diversity(dialogues, topic_of, topics), "accepted": diversity(kept, topic_of, topics)},
        "voice": {"generated": voice(dialogues, bible), "accepted": voice(kept, bible)},
        "spend": {"requests": generator.budget.spent_requests, "tokens": generator.budget.spent_tokens,
                  "max_requests": g.max_requests, "max_tokens": g.max_tokens},
        "examples": {"accepted": [{"id": d["id"], "messages": d["messages"]} for d in kept][:5],
                     "rejected": [{"id": d["id"], "reason": v.reasons[0], "messages": d["messages"]}
                                  for d, v in zip(dialogues, verdicts) if v.reasons][:8]},
    }
