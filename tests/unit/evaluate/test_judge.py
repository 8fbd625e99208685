"""The LLM-judge protocol (evaluate/judge.py) against a real local HTTP endpoint: pairwise tuned vs
baseline with swapped positions, the consistency rates, the call budget, and where the key goes."""

import logging
import re

import pytest

from recipe_runner.config.schema import JudgeConfig
from recipe_runner.evaluate.intervals import interval
from recipe_runner.evaluate.judge import (
    STOP_AFTER, Budget, Consistency, Pairwise, consistency, pairwise, parse_choice, parse_yes_no, persona_facts,
)

from judge_endpoint import judge_endpoint

KEY = "sk-judge-test-0123456789"
BIBLE = {"name": "Alex", "role": "Cynical IT architect.", "values": ["no meetings"], "knowledge": ["DNS"],
         "speech_patterns": ["greets with yo"], "taboos": ["never says hello"], "markers": ["yo"],
         "taboo_patterns": [r"(?i)\bhello\b"]}
# (prompt, tuned answer, baseline answer): the marker judge prefers the reply saying "yo"
TRIPLES = [
    ("p0", "yo, ship it", "Hello! Happy to help."),  # tuned wins both orders: 1
    ("p1", "yo nope", "Hi there, certainly!"),  # 1
    ("p2", "meh", "yo, sure"),  # tuned loses both orders: 0
    ("p3", "yo", "yo man"),  # both say it: tie both orders: 0.5
    ("p4", "fine", "ok"),  # neither: 0.5
    ("p5", "same answer", "same answer"),  # identical: a tie without a call
]
DIALOGUE = [("morning!", "yo."), ("cache?", "it's always DNS."), ("are you a bot?", "As an AI, I cannot say."),
            ("meetings?", "no meetings, ever."), ("standup?", "I love meetings, book more."),
            ("dns again?", "yo, DNS."), ("deploy?", "ship it."), ("weekend?", "sleep."), ("bye", "later.")]


def cfg(url: str, **kw) -> JudgeConfig:
    return JudgeConfig(enabled=True, base_url=url, model="judge-m", api_key_env="MY_JUDGE_KEY", timeout_s=5, **kw)


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", KEY)


def replies(content: str) -> tuple[str, str]:
    """Reply A and Reply B of a pairwise prompt."""
    a = re.search(r"\nReply A: (.*?)\n\nReply B: ", content, re.DOTALL)
    b = re.search(r"\nReply B: (.*?)\n\nWhich reply", content, re.DOTALL)
    return a.group(1), b.group(1)


def marker_judge(content: str) -> str:
    """Prefers the reply containing "yo"; a tie when both or neither do."""
    a, b = (bool(re.search(r"\byo\b", x)) for x in replies(content))
    return "Answer: A" if a and not b else "B." if b and not a else "tie"


def kind(content: str) -> str:
    if "Which reply is more in character" in content:
        return "pairwise"
    if "contradict the character bible" in content:
        return "prompt_to_line"
    if "contradict anything" in content:
        return "line_to_line"
    assert "Taken together" in content, content
    return "qa"


def consistency_judge(content: str) -> str:
    """Finds the contradictions planted in DIALOGUE: "As an AI" breaks the bible (and its facts), "I love
    meetings" contradicts the earlier "no meetings"."""
    k = kind(content)
    if k == "pairwise":
        return marker_judge(content)
    if k == "prompt_to_line":
        return "Yes." if "As an AI" in content.split("replied:")[-1] else "No"
    if k == "line_to_line":
        history, last = content.split("\n\nAlex then said: ")
        return "YES, it does" if "love meetings" in last and "no meetings" in history else "no"
    return "yes" if "As an AI" in content else "no"


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, choice", [
    ("A", "A"), ("B", "B"), ("a", "A"), ("Answer: B", "B"), ("**A**", "A"), ("B.", "B"), ("(A)", "A"),
    ("Reply A is more in character", "A"), ("The answer is B", "B"), ("Final verdict: A", "A"),
    ("tie", "tie"), ("Tie.", "tie"), ("TIE", "tie"), ("Both are equally in character", "tie"),
    ("a reply in character", None), ("I prefer A", None), ("", None), ("¯\\_(ツ)_/¯", None), ("yes", None),
])
def test_a_pairwise_answer_is_parsed_robustly(text, choice):
    assert parse_choice(text) == choice


@pytest.mark.parametrize("text, value", [
    ("yes", True), ("Yes.", True), ("YES, the line contradicts", True), ("Answer: no", False), ("No", False),
    ("no.", False), ("**No**", False), ("The answer is yes", True), ("maybe", None), ("", None), ("A", None),
])
def test_a_yes_no_answer_is_parsed_robustly(text, value):
    assert parse_yes_no(text) is value


# ---------------------------------------------------------------- pairwise


def test_pairwise_asks_both_orders_and_scores_wins_ties_and_losses():
    with judge_endpoint(answer=marker_judge) as (url, seen):
        result = pairwise(cfg(url), BIBLE, TRIPLES, Budget(120))
    assert result == Pairwise(items=[1.0, 1.0, 0.0, 0.5, 0.5, 0.5], wins=2, ties=3, losses=1, failed=0, calls=10)
    mean, low, high = interval(result.items)
    assert mean == pytest.approx(3.5 / 6) and low < mean < high  # the win rate and its bootstrap interval
    assert len(seen) == 10  # 5 pairs x 2 orders; the identical answers cost nothing
    # the key of the named variable, on every call, to the configured path
    assert {(path, auth) for path, auth, _ in seen} == {("/v1/chat/completions", f"Bearer {KEY}")}
    first, second = (body["messages"][0]["content"] for _, _, body in seen[:2])
    assert replies(first) == ("yo, ship it", "Hello! Happy to help.")  # tuned as A ...
    assert replies(second) == ("Hello! Happy to help.", "yo, ship it")  # ... then as B
    body = seen[0][2]
    assert body["model"] == "judge-m" and body["temperature"] == 0 and body["max_tokens"] <= 8
    assert '"name": "Alex"' in first and "The user said: p0" in first
    assert "taboo_patterns" not in first  # the rule checks' regexes are not shown to the judge


def test_a_judge_with_position_bias_comes_out_as_all_ties():
    with judge_endpoint(answer=lambda content: "A") as (url, seen):
        result = pairwise(cfg(url), BIBLE, TRIPLES, Budget(120))
    assert result.items == [0.5] * 6 and (result.wins, result.ties, result.losses) == (0, 6, 0)
    assert interval(result.items)[0] == 0.5 and len(seen) == result.calls == 10


def test_garbage_answers_are_failed_items_logged_without_the_key(caplog):
    calls = []

    def flaky(content: str) -> str:
        calls.append(content)
        return "I'd rather not say" if len(calls) in (3, 10) else marker_judge(content)  # p1 first, p4 second order

    caplog.set_level(logging.WARNING, logger="recipe_runner.evaluate.judge")
    with judge_endpoint(answer=flaky) as (url, _):
        result = pairwise(cfg(url), BIBLE, TRIPLES, Budget(120))
    assert result.items == [1.0, None, 0.0, 0.5, None, 0.5]
    assert (result.wins, result.ties, result.losses, result.failed, result.calls) == (1, 2, 1, 2, 10)
    assert interval(result.items)[0] == pytest.approx(2 / 4)  # failed prompts are left out of the rate
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("I'd rather not say" in w for w in warnings)  # once per failed call
    assert KEY not in caplog.text


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_is_a_failed_call_and_the_key_never_reaches_its_target(code, caplog):
    caplog.set_level(logging.WARNING, logger="recipe_runner.evaluate.judge")
    with judge_endpoint() as (elsewhere, stolen), \
            judge_endpoint(redirect_to=elsewhere + "/chat/completions", redirect_code=code) as (url, seen):
        result = pairwise(cfg(url), BIBLE, TRIPLES[:2], Budget(120))
    assert result.items == [None, None] and result.failed == 2
    assert stolen == []  # nothing, the key least of all, reached the redirect's target
    # 4 calls planned, STOP_AFTER answered none: the endpoint is given up on, the rest is failed
    assert result.calls == STOP_AFTER == len(seen) and {auth for _, auth, _ in seen} == {f"Bearer {KEY}"}
    assert "not followed" in caplog.text and KEY not in caplog.text


def test_a_failing_endpoint_is_given_up_on_and_everything_planned_is_failed():
    budget = Budget(120)
    with judge_endpoint(answer=lambda content: 500) as (url, seen):
        pw = pairwise(cfg(url), BIBLE, TRIPLES, budget)
        cs = consistency(cfg(url), BIBLE, [DIALOGUE], budget)
    assert pw.items == [None] * 5 + [0.5] and pw.failed == 5  # identical answers need no judge
    assert len(seen) == pw.calls == STOP_AFTER and cs.calls == 0 and budget.used == STOP_AFTER
    assert cs.failed == 9 + 8 + 1 and all(v is None for values in cs.items.values() for v in values)


def test_no_server_is_a_failed_call_not_a_crash():
    result = pairwise(cfg("http://127.0.0.1:9/v1"), BIBLE, TRIPLES[:1], Budget(4))
    assert result.items == [None] and result.failed == 1 and result.calls == 2


# ---------------------------------------------------------------- consistency


def test_consistency_finds_the_contradictions_planted_in_a_dialogue():
    with judge_endpoint(answer=consistency_judge) as (url, seen):
        result = consistency(cfg(url), BIBLE, [DIALOGUE, DIALOGUE[:2]], Budget(120))
    # per reply: the third breaks the bible; the fifth contradicts the fourth
    assert result.items["prompt_to_line"] == [1, 1, 0, 1, 1, 1, 1, 1, 1] + [1, 1]
    assert result.items["line_to_line"] == [1, 1, 1, 0, 1, 1, 1, 1] + [1]  # from each dialogue's 2nd reply
    assert result.items["qa"] == [0, 1]  # per dialogue: "As an AI" contradicts who Alex is
    assert result.failed == 0 and result.calls == len(seen) == 11 + 9 + 2
    assert {auth for _, auth, _ in seen} == {f"Bearer {KEY}"}
    texts = [body["messages"][0]["content"] for _, _, body in seen]
    line = next(t for t in texts if kind(t) == "line_to_line" and "I love meetings" in t.split("then said:")[1])
    assert "User: meetings?\nAlex: no meetings, ever.\nUser: standup?" in line  # the history up to the reply
    qa = next(t for t in texts if kind(t) == "qa")
    assert "- who they are: Cynical IT architect." in qa and "- values: no meetings" in qa
    assert "greets with yo" not in qa  # facts, not style


def test_persona_facts_are_who_the_persona_is_not_how_it_speaks():
    facts = persona_facts({**BIBLE, "backstory": "grew up in Leeds", "age": 35, "language": "en", "max_sentences": 3})
    assert facts == ["name: Alex", "who they are: Cynical IT architect.", "values: no meetings", "knows about: DNS",
                     "backstory: grew up in Leeds", "age: 35"]


def judged_line(content: str) -> str | None:
    """The reply a prompt-to-line or line-to-line prompt asks about."""
    m = re.search(r"(?:replied|then said): (.*)", content)
    return m.group(1) if m else None


def test_garbage_consistency_answers_are_failed_items():
    with judge_endpoint(answer=lambda content: "Hmm." if judged_line(content) == "it's always DNS."
                        else consistency_judge(content)) as (url, _):
        result = consistency(cfg(url), BIBLE, [DIALOGUE[:3]], Budget(120))
    # reply 2 (to "cache?"): its prompt-to-line and line-to-line calls come back as garbage
    assert result.items["prompt_to_line"] == [1, None, 0] and result.items["line_to_line"] == [None, 1]
    assert result.failed == 2 and result.calls == 3 + 2 + 1


# ---------------------------------------------------------------- the budget


def test_the_budget_caps_the_calls_pairwise_first_consistency_the_rest():
    budget = Budget(20)
    with judge_endpoint(answer=consistency_judge) as (url, seen):
        pw = pairwise(cfg(url), BIBLE, TRIPLES, budget)
        cs = consistency(cfg(url), BIBLE, [DIALOGUE], budget)
    assert len(seen) == 20 == budget.used == pw.calls + cs.calls  # exactly max_calls reach the server
    assert pw.calls == 10 and len(pw.items) == 6  # pairwise had all it wanted ...
    # ... the consistency metrics share the 10 left (9 + 8 + 1 wanted): equal shares, then in turn
    assert [len(cs.items[k]) for k in ("prompt_to_line", "line_to_line", "qa")] == [5, 4, 1]
    assert not budget.take()


def test_a_short_budget_judges_whole_pairs_spread_over_the_prompts():
    budget = Budget(7)
    with judge_endpoint(answer=consistency_judge) as (url, seen):
        pw = pairwise(cfg(url), BIBLE, TRIPLES, budget)
        cs = consistency(cfg(url), BIBLE, [DIALOGUE], budget)
    assert len(seen) == 7 and pw.calls == 6 and cs.calls == 1
    judged = sorted({re.search(r"The user said: (p\d)", body["messages"][0]["content"]).group(1)
                     for _, _, body in seen[:6]})
    assert judged == ["p0", "p2", "p4"]  # 3 of the 5 that need a judge, evenly spread, in whole pairs
    assert pw.items == [1.0, 0.0, 0.5, 0.5]  # p0, p2, p4, and p5 (identical: free)
    assert cs.items == {"prompt_to_line": [1.0], "line_to_line": [], "qa": []}
    # the same budget picks the same prompts and lines every time
    with judge_endpoint(answer=consistency_judge) as (url, again):
        budget = Budget(7)
        pairwise(cfg(url), BIBLE, TRIPLES, budget), consistency(cfg(url), BIBLE, [DIALOGUE], budget)
    assert [b for _, _, b in again] == [b for _, _, b in seen]


def test_a_short_budget_spreads_the_lines_over_the_dialogue():
    with judge_endpoint(answer=consistency_judge) as (url, seen):
        result = consistency(cfg(url), BIBLE, [DIALOGUE], Budget(3))
    lines = [body["messages"][0]["content"].split("replied: ")[-1].split("\n")[0] for _, _, body in seen
             if kind(body["messages"][0]["content"]) == "prompt_to_line"]
    assert lines == [DIALOGUE[4][1]]  # 1 each: the middle reply, not the first
    assert [len(v) for v in result.items.values()] == [1, 1, 1]


def test_switched_off_parts_ask_nothing():
    with judge_endpoint(answer=consistency_judge) as (url, seen):
        budget = Budget(120)
        pw = pairwise(cfg(url, pairwise=False), BIBLE, TRIPLES, budget)
        cs = consistency(cfg(url, consistency=False), BIBLE, [DIALOGUE], budget)
        empty = consistency(cfg(url), BIBLE, [], budget)
    assert pw == Pairwise() and cs == Consistency() and empty == Consistency() and seen == [] and budget.used == 0
