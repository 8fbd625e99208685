"""Optional LLM judge on any OpenAI-compatible chat endpoint: pairwise tuned vs baseline, and the
persona-consistency rates of Abdulhai et al. 2025 over the scripted conversations (docs/judge.md).

An absolute 0-10 "how in character is this?" score is poorly calibrated (the same answer drifts
between judge versions, and most land on 7-8), so the evaluation asks two kinds of questions a
judge answers more reliably:

- `pairwise`: for each held-out persona prompt, the bible, the prompt and two replies (the tuned
  model's and the prompt-only baseline's) and "which is more in character: A, B or tie?". Every
  pair is asked twice with the positions swapped; the tuned model scores 1 when it wins both
  orders, 0 when it loses both, 0.5 otherwise (a tie in either order, or the two orders
  disagreeing: position bias, counted as a tie). The mean of the items is the tuned model's win
  rate (0.5 = no better than its baseline).
- `consistency`: binary yes/no calls over multi-turn dialogues, after "Consistently Simulating
  Human Personas with Multi-Turn RL" (Abdulhai, Cheng, Clay, Althoff, Levine, Jaques; arXiv
  2511.00222). The definitions follow the authors' evaluation code (github.com/abdulhaim/
  consistency_LLMs: config/eval_prompts.json and its metrics script), whose judge is asked whether
  a line *contradicts* (YES) or not (NO), a line scoring 1 when it does not:
  * prompt-to-line: does this reply contradict the persona description (here: the bible)?
    Asked of every reply; the paper's per-dialogue score is the share of replies that do not.
  * line-to-line: does this reply contradict a previous line of the same speaker? Asked of every
    reply but the first (nothing precedes it: the paper's judge sees an empty history there),
    with the conversation up to that reply.
  * Q&A: the paper has a judge write multiple-choice questions from the persona's backstory, has
    the simulated persona answer them after every line and grades the answers. Here the judge
    sees only transcripts (the model is not asked anything new), so the adaptation is one call
    per dialogue: the facts the bible reveals about the persona (name, role, values, knowledge,
    and any free text field such as a backstory) and the whole conversation, and "do the
    persona's replies, taken together, contradict any of these facts?". It checks the same
    thing - does what the persona says about itself agree with who it is - over the whole
    dialogue, at one call instead of (questions x lines) calls.
  Items are per reply (prompt-to-line, line-to-line: the rates are then the paper's scores pooled
  over replies) and per dialogue (Q&A). Replies of one conversation are not independent, so an
  interval over replies is narrower than one over conversations would be.

`Budget` caps the calls of one evaluation: `pairwise` spends first (2 calls per prompt, whole
pairs only), `consistency` gets what is left, shared fairly between its three metrics. When the
budget is short, the prompts and replies judged are spread evenly over the list (`_spread`), the
same ones at every evaluation. Three calls in a row that get no answer at all (a dead endpoint,
a redirect, a 500) close the budget: the rest is reported as failed, not waited for.

Off by default; the whole eval.judge block is a user setting (the command line or the user's
settings file, never a recipe: user_settings.py). The key is read from the environment variable
the user names and sent only to the endpoint the user configured: a redirect is not followed
(urllib would forward the Authorization header to any host it is sent to), and the key is never
logged. A failed or unparsable call is a missing item (None), logged once as a warning, not a
crash: the judge is advice, the rule-based checks are the record.

`judge_scores` keeps the old absolute 0-10 score for one user only: synth.check.judge_min_score,
which filters generated dialogues (synthesize/stage.py), not the evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_TOKENS = 8  # "Answer: B", "tie", "No." fit; a judge that starts an essay is cut off and parsed if it began right
STOP_AFTER = 3  # calls in a row without an answer that close the budget (the endpoint is down)
HIDDEN_FIELDS = ("taboo_patterns",)  # regexes for the rule checks: noise to a judge

PAIRWISE = (
    "You compare two replies by the same character. Character bible (JSON):\n{bible}\n\n"
    "The user said: {prompt}\n\n"
    "Reply A: {a}\n\n"
    "Reply B: {b}\n\n"
    "Which reply is more in character for {name}: closer to the bible's voice, values and knowledge, "
    "and free of its taboos? The order of the replies does not matter. "
    "Answer with one word: A, B or tie."
)
PROMPT_TO_LINE = (
    "Character bible of {name} (JSON):\n{bible}\n\n"
    "In a conversation, the user said: {user}\n"
    "{name} replied: {reply}\n\n"
    "Does this reply contradict the character bible of {name} (its role, voice, values, knowledge "
    "or taboos)? Answer with one word: yes or no."
)
LINE_TO_LINE = (
    "A conversation between a user and {name}:\n{history}\n\n"
    "{name} then said: {reply}\n\n"
    "Does this last line of {name} contradict anything {name} said earlier in the conversation? "
    "Answer with one word: yes or no."
)
QA = (
    "Facts about {name}:\n{facts}\n\n"
    "A conversation between a user and {name}:\n{transcript}\n\n"
    "Taken together, do {name}'s replies contradict any of these facts about {name}? "
    "Answer with one word: yes or no."
)
RUBRIC = (  # judge_scores (synthesis filter only)
    "You grade whether a reply is in character. Character bible (JSON):\n{bible}\n\n"
    "User said: {prompt}\nReply: {answer}\n\n"
    "Score 0 (out of character: generic assistant voice, broken taboos) to 10 (exactly this character). "
    "Answer with the number only."
)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(3xx): the key stays with the configured endpoint


_OPENER = urllib.request.build_opener(_RefuseRedirects)


class Budget:
    """The judge calls one evaluation may make (eval.judge.max_calls), shared by `pairwise` and then
    `consistency`. `take()` spends one (False: none left); `left` is what remains to plan with.
    STOP_AFTER calls in a row without an answer close it: `take()` refuses, and what was planned
    comes out as failed items."""

    def __init__(self, max_calls: int):
        self.max_calls = max(0, int(max_calls))
        self.used = 0  # calls made
        self.dead = 0  # calls in a row that got no answer

    @property
    def left(self) -> int:
        return self.max_calls - self.used

    def take(self) -> bool:
        if self.left <= 0 or self.dead >= STOP_AFTER:
            return False
        self.used += 1
        return True


@dataclass
class Pairwise:
    """Tuned vs baseline on the persona prompts judged (in the order given)."""

    items: list[float | None] = field(default_factory=list)  # per prompt: 1 / 0.5 / 0, None = a failed call
    wins: int = 0
    ties: int = 0
    losses: int = 0
    failed: int = 0
    calls: int = 0


@dataclass
class Consistency:
    """The three consistency rates' items: 1 = consistent, 0 = the judge found a contradiction."""

    items: dict[str, list[float | None]] = field(
        default_factory=lambda: {"prompt_to_line": [], "line_to_line": [], "qa": []})  # per reply / per dialogue (qa)
    failed: int = 0
    calls: int = 0


# ---------------------------------------------------------------- the endpoint


class _Judge:
    """One evaluation's connection to the endpoint: the URL, the key (never logged), the budget."""

    def __init__(self, jcfg, budget: Budget | None):
        self.cfg = jcfg
        self.key = os.environ.get(jcfg.api_key_env, "")
        self.url = str(jcfg.base_url).rstrip("/") + "/chat/completions"
        self.timeout = float(getattr(jcfg, "timeout_s", 60.0))
        self.budget = budget
        self.calls = 0

    def ask(self, text: str, max_tokens: int = MAX_TOKENS) -> str | None:
        """The judge's reply to one user message; None when the budget is spent or the call failed."""
        if self.budget is not None and not self.budget.take():
            return None
        self.calls += 1
        body = {"model": self.cfg.model, "temperature": 0, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": text}]}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                content = json.loads(response.read())["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("no text")
        except urllib.error.HTTPError as exc:
            where = f" to {exc.headers.get('Location')} (not followed: the key goes only to {self.url})" \
                if 300 <= exc.code < 400 else ""
            log.warning("judge: %s answered %d%s; no verdict", self.url, exc.code, where)
            self._dead()
            return None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("judge: %s failed (%s); no verdict", self.url, type(exc).__name__)
            self._dead()
            return None
        if self.budget is not None:
            self.budget.dead = 0
        return content

    def _dead(self) -> None:
        if self.budget is not None:
            self.budget.dead += 1
            if self.budget.dead == STOP_AFTER:
                log.warning("judge: %d calls in a row got no answer from %s; no more calls this evaluation",
                            STOP_AFTER, self.url)

    def verdict(self, text: str, parse, expected: str):
        """ask + parse; an answer that does not parse is logged (shortened) and None."""
        reply = self.ask(text)
        if reply is None:
            return None
        value = parse(reply)
        if value is None:
            log.warning("judge: %s answered %r, not %s; no verdict", self.url, reply[:60], expected)
        return value


# ---------------------------------------------------------------- parsing

_FILLER = frozenset({"answer", "final", "verdict", "winner", "choice", "decision", "the", "is", "reply", "response",
                     "option", "my"})
_TIES = frozenset({"tie", "draw", "equal", "equally", "both", "neither", "same"})


def _words(text: str) -> list[str]:
    """The answer's words with the leading filler ("Answer:", "**Verdict**: the reply") dropped."""
    words = re.findall(r"[A-Za-z]+", text or "")
    while words and words[0].lower() in _FILLER and len(words) > 1:
        words.pop(0)
    return words


def parse_choice(text: str) -> str | None:
    """"A", "B" or "tie" from a judge's answer ("A", "Answer: B", "**Tie**.", "Reply A is better"); None
    otherwise. A lone lowercase "a" counts, "a reply ..." does not (the article)."""
    words = _words(text)
    if not words:
        return None
    first = words[0]
    if first in ("A", "B") or (first.lower() in ("a", "b") and len(words) == 1):
        return first.upper()
    return "tie" if first.lower() in _TIES else None


def parse_yes_no(text: str) -> bool | None:
    """True for yes, False for no ("Yes.", "NO, the line ...", "Answer: no"); None otherwise."""
    words = _words(text)
    first = words[0].lower() if words else ""
    return True if first == "yes" else False if first == "no" else None


# ---------------------------------------------------------------- what the judge is shown


def _sheet(bible: dict) -> str:
    return json.dumps({k: v for k, v in bible.items() if k not in HIDDEN_FIELDS}, ensure_ascii=False)


def _name(bible: dict) -> str:
    return str(bible.get("name") or "the character")


def persona_facts(bible: dict) -> list[str]:
    """What the bible says about who the persona is (not how it speaks): name, role, values,
    knowledge, and any other free text field (a backstory, an age, a city)."""
    style = {"speech_patterns", "taboos", "markers", "taboo_patterns", "max_sentences", "language"}
    facts = [f"name: {bible['name']}"] if bible.get("name") else []
    for key, value in bible.items():
        if key in style or key == "name":
            continue
        values = value if isinstance(value, list) else [value]
        label = {"role": "who they are", "values": "values", "knowledge": "knows about"}.get(key, key)
        facts += [f"{label}: {v}" for v in values if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    return facts


def _transcript(turns: list[tuple[str, str]], name: str) -> str:
    return "\n".join(f"User: {user}\n{name}: {reply}" for user, reply in turns)


def _spread(n: int, k: int) -> list[int]:
    """k of the indices 0..n-1, evenly spread (the middle of k equal strata); all of them when k >= n.
    The same n and k give the same indices: the same prompts are judged at every evaluation."""
    if k >= n:
        return list(range(n))
    return [int((i + 0.5) * n / k) for i in range(max(k, 0))]


# ---------------------------------------------------------------- the protocol


def pairwise(jcfg, bible: dict, triples: list[tuple[str, str, str]], budget: Budget) -> Pairwise:
    """Tuned vs baseline: `triples` are (prompt, tuned answer, baseline answer). Each prompt judged
    costs 2 calls (tuned as A, then as B); identical answers are a tie without a call. When the
    budget is short, whole pairs of calls are spent on prompts spread evenly over the list; the
    prompts not judged are left out of `items`. Off (eval.judge.pairwise=false): nothing is asked."""
    out = Pairwise()
    if not getattr(jcfg, "pairwise", True) or not triples:
        return out
    judge = _Judge(jcfg, budget)
    sheet, name = _sheet(bible), _name(bible)
    costly = [i for i, (_, t, b) in enumerate(triples) if t.strip() != b.strip()]
    chosen = {costly[j] for j in _spread(len(costly), budget.left // 2)}
    for i, (prompt, tuned, base) in enumerate(triples):
        if tuned.strip() == base.strip():
            score: float | None = 0.5
        elif i not in chosen:
            continue
        else:
            first = judge.verdict(PAIRWISE.format(bible=sheet, name=name, prompt=prompt, a=tuned, b=base),
                                  parse_choice, "A, B or tie")
            second = judge.verdict(PAIRWISE.format(bible=sheet, name=name, prompt=prompt, a=base, b=tuned),
                                   parse_choice, "A, B or tie")
            if first is None or second is None:
                score = None
            else:
                won, lost = (first == "A") + (second == "B"), (first == "B") + (second == "A")
                score = 1.0 if won == 2 else 0.0 if lost == 2 else 0.5
        out.items.append(score)
        if score is None:
            out.failed += 1
        elif score == 1.0:
            out.wins += 1
        elif score == 0.0:
            out.losses += 1
        else:
            out.ties += 1
    out.calls = judge.calls
    return out


def _shares(left: int, demands: list[int]) -> list[int]:
    """`left` calls shared between metrics wanting `demands`: an equal share each, capped by its
    demand, what one does not use going to the next in turn."""
    shares = [0] * len(demands)
    while left > 0:
        open_ = [i for i, d in enumerate(demands) if shares[i] < d]
        if not open_:
            break
        each = max(left // len(open_), 1)
        for i in open_:
            give = min(each, demands[i] - shares[i], left)
            shares[i] += give
            left -= give
    return shares


def consistency(jcfg, bible: dict, dialogues: list[list[tuple[str, str]]], budget: Budget) -> Consistency:
    """Prompt-to-line, line-to-line and Q&A consistency (module docstring) of `dialogues`, each a list
    of (user turn, reply). Spends what `budget` has left, shared between the three metrics; when it
    is short, the replies (dialogues, for Q&A) judged are spread evenly. Items not judged are left out.
    Off (eval.judge.consistency=false): nothing is asked."""
    out = Consistency()
    dialogues = [d for d in dialogues if d]
    if not getattr(jcfg, "consistency", True) or not dialogues:
        return out
    judge = _Judge(jcfg, budget)
    sheet, name = _sheet(bible), _name(bible)
    lines = [(d, t) for d, turns in enumerate(dialogues) for t in range(len(turns))]
    later = [(d, t) for d, t in lines if t > 0]
    facts = persona_facts(bible)
    qa = list(range(len(dialogues))) if facts else []
    shares = _shares(budget.left, [len(lines), len(later), len(qa)])

    def rate(contradicts: bool | None) -> float | None:
        return None if contradicts is None else 0.0 if contradicts else 1.0

    for j in _spread(len(lines), shares[0]):
        d, t = lines[j]
        user, reply = dialogues[d][t]
        text = PROMPT_TO_LINE.format(bible=sheet, name=name, user=user, reply=reply)
        out.items["prompt_to_line"].append(rate(judge.verdict(text, parse_yes_no, "yes or no")))
    for j in _spread(len(later), shares[1]):
        d, t = later[j]
        user, reply = dialogues[d][t]
        history = _transcript(dialogues[d][:t], name) + f"\nUser: {user}"
        text = LINE_TO_LINE.format(name=name, history=history, reply=reply)
        out.items["line_to_line"].append(rate(judge.verdict(text, parse_yes_no, "yes or no")))
    for j in _spread(len(qa), shares[2]):
        text = QA.format(name=name, facts="\n".join(f"- {f}" for f in facts),
                         transcript=_transcript(dialogues[qa[j]], name))
        out.items["qa"].append(rate(judge.verdict(text, parse_yes_no, "yes or no")))
    out.failed = sum(v is None for values in out.items.values() for v in values)
    out.calls = judge.calls
    return out


def judge_scores(jcfg, bible: dict, pairs: list[tuple[str, str]]) -> list[float | None]:
    """An absolute in-character score 0-10 per (prompt, answer), None = failed: the synthesis filter
    synth.check.judge_min_score only (the evaluation uses `pairwise` and `consistency`). One call per
    pair, no budget (the synthesis counts its own); three calls in a row without an answer end it."""
    judge = _Judge(jcfg, Budget(len(pairs)))
    scores: list[float | None] = []
    for prompt, answer in pairs:
        text = judge.ask(RUBRIC.format(bible=_sheet(bible), prompt=prompt, answer=answer), max_tokens=4)
        number = re.search(r"\d+(?:\.\d+)?", text) if text is not None else None
        if text is not None and number is None:
            log.warning("judge: %s answered %r, not a score; no score", judge.url, text[:60])
        scores.append(min(max(float(number.group()), 0.0), 10.0) if number else None)
    return scores
