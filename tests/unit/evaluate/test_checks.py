"""The metrics are named once (evaluate/metrics.py) and the checks are a list (evaluate/checks.py):
Checker.run on canned answers, no model. The end-to-end run on a tiny model is test_evaluation.py."""

from __future__ import annotations

import ast

import pytest
from omegaconf import OmegaConf

from recipe_runner.config.schema import EvalConfig
from recipe_runner.data.bible import load_bible
from recipe_runner.evaluate import checker as checker_module
from recipe_runner.evaluate import checks as checks_module
from recipe_runner.evaluate.checker import Checker
from recipe_runner.evaluate.checks import CHECKS, Check, Measured
from recipe_runner.evaluate.metrics import (
    ADHERENCE, BASELINE, BY_KEY, COPY_RATE, DUPLICATE_RATE, EVAL, METRICS, ORDINARY_NLL_DELTA, STILL_ANSWERS, Better,
    Metric,
)

from conftest import REPO  # noqa: E402
SRC = REPO / "src" / "recipe_runner"
TUNED = "yo, it's always DNS. check the resolver cache before you blame the deploy."  # every rule kept
BASE = "Hello! As an AI language model, I'd be happy to help you with that question today."  # no marker, taboos


def test_every_metric_key_is_spelled_only_in_metrics_py():
    # a key typed a second time is a second place to change when the metric is renamed
    groups = tuple(m.group + "/" for m in METRICS if m.group)
    keys = set(BY_KEY)
    # not these metrics: eval.select.metric's value `combined` (the schema's default and its check:
    # a choice named after the metric; the search objective of that name in choices.py), and a
    # synthesised dialogue the bible check rejected
    elsewhere = {("schema.py", "combined"), ("validate.py", "combined"), ("choices.py", "combined"),
                 ("synthesize", "rejected"), ("synth_report.py", "rejected")}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "evaluate" / "metrics.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
                continue
            text = node.value
            bare = text.removeprefix(EVAL).removeprefix(BASELINE)
            if text in (EVAL, BASELINE) or text.startswith(groups) or bare in keys:
                where = path.relative_to(SRC)
                if not any((part, bare) in elsewhere for part in (where.parts[0], where.name)):
                    found.append(f"{where}:{node.lineno}: {text!r}")
    assert not found, "metric keys typed outside evaluate/metrics.py:\n" + "\n".join(found)


def test_every_check_reports_declared_metrics_and_interval_names_are_unique():
    declared = [m for check in CHECKS for m in check.metrics]
    assert len({m.key for m in METRICS}) == len(METRICS)
    assert all(BY_KEY.get(m.key) is m for m in declared), "a check's metric missing from metrics.METRICS"
    assert len(declared) == len(set(declared)), "two checks report the same metric"
    names = [m.name for m in METRICS if m.interval]  # Checker.items and the checkpoint key them by name
    assert len(names) == len(set(names))
    assert all(isinstance(m.better, Better) and m.meaning for m in METRICS)
    assert {c.phase for c in CHECKS} <= {"persona", "conversations", "ordinary"}


@pytest.fixture()
def checker(monkeypatch):
    cfg = OmegaConf.structured(EvalConfig(
        persona_prompts=str(REPO / "data/alex/eval_prompts.jsonl"), dialogues=str(REPO / "data/alex/eval_dialogues.jsonl"),
        ordinary_prompts=str(REPO / "data/eval/ordinary_prompts.jsonl"), max_prompts=6, max_dialogues=1, samples=2,
        still_answers=str(REPO / "data/eval/still_answers.jsonl"), max_still_answers=8))
    bible = load_bible(str(REPO / "data/alex/bible.yaml"))
    made = Checker(cfg, tokenizer=None, bible=bible, system="You are Alex.", train_answers=[TUNED] * 4)
    # canned greedy answers: the tuned model speaks as Alex, the base model as an assistant
    monkeypatch.setattr(Checker, "gen", lambda self, model, convos, adapter, max_new_tokens=None, batch_size=None, repetition_penalty=None:
                        [TUNED if adapter else BASE] * len(convos))
    nll = lambda model, tok, convos, answers, batch_size, adapter=True: [2.5 if adapter else 2.0] * len(convos)  # noqa: E731
    monkeypatch.setattr(checker_module, "answer_nll", nll)
    monkeypatch.setattr(checks_module, "answer_nll", nll)
    return made


def test_checker_runs_the_list_and_adds_intervals_and_gains(checker):
    checker.base_reference(model=None)
    base, samples = checker.run(model=None, adapter=False)
    tuned, _ = checker.run(model=None, adapter=True)
    keys = [m.key for check in CHECKS for m in check.metrics if check.__name__ != "Judge"]  # eval.judge is off
    with_ci = [m for check in CHECKS for m in check.metrics if m.interval and check.__name__ != "Judge"]
    assert set(base) == set(keys) | {k for m in with_ci for k in (m.lo, m.hi)}
    assert set(tuned) == set(base) | {k for m in with_ci for k in (m.gain, m.gain_lo, m.gain_hi)}
    assert list(tuned)[:5] == [m.key for m in CHECKS[0].metrics]  # the checks' order is summary.json's
    assert base[ADHERENCE.key] == 0.5 and tuned[ADHERENCE.key] == 1.0  # the base answer keeps length and language
    assert tuned[ADHERENCE.gain] == tuned[ADHERENCE.gain_lo] == 0.5
    assert tuned[ORDINARY_NLL_DELTA.key] == pytest.approx(0.5) and base[ORDINARY_NLL_DELTA.key] == 0.0
    assert tuned[COPY_RATE.key] == 1.0 and base[COPY_RATE.key] == 0.0  # the tuned model says a training answer
    assert checker.items[ADHERENCE.name] == [1.0] * 6 and checker.base_items[ADHERENCE.name] == [0.5] * 6
    assert [s["set"] for s in samples] == ["persona", "persona", "ordinary", "ordinary"]
    # canned: one answer to every prompt, on both sides: templated, and no checkable question answered
    assert tuned[DUPLICATE_RATE.key] == base[DUPLICATE_RATE.key] == 1.0 and tuned[DUPLICATE_RATE.gain] == 0.0
    assert tuned[STILL_ANSWERS.key] == 0.0 and len(checker.items[STILL_ANSWERS.name]) == 8


def test_a_new_check_is_one_class_and_one_entry_in_the_list(checker, monkeypatch):
    # what docs/extending.md "Add a check" describes: a Metric, a Check, an entry in CHECKS
    exclaims = Metric("persona", "exclaim_rate", "share of answers with an exclamation mark", Better.lower, True)

    class Exclaims(Check):
        name, metrics = "exclamations", (exclaims,)

        def measure(self, said):
            per_answer = [float("!" in a) for a in said.persona]
            return Measured({exclaims.key: sum(per_answer) / len(per_answer)}, {exclaims: per_answer})

    monkeypatch.setattr(checks_module, "CHECKS", (*CHECKS, Exclaims))
    monkeypatch.setattr(checker_module, "CHECKS", (*CHECKS, Exclaims))
    made = Checker(checker.cfg, None, checker.bible, checker.system, [TUNED])
    made.base_reference(model=None)
    base, _ = made.run(model=None, adapter=False)
    tuned, _ = made.run(model=None, adapter=True)
    assert base[exclaims.key] == 1.0 and base[exclaims.lo] == base[exclaims.hi] == 1.0
    assert tuned[exclaims.key] == 0.0 and tuned[exclaims.gain] == -1.0


def test_a_question_budget_is_spread_over_the_whole_file():
    from recipe_runner.evaluate.checker import spread

    assert spread(list(range(10)), 4) == [0, 2, 5, 7] and spread([1, 2], None) == [1, 2] and spread([1], 5) == [1]
