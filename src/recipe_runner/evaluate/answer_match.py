"""Still answers: does the tuned model still get easy questions right, not just sound different?

The forgetting check (forget/*) measures how likely the tuned model finds the base model's own
answers to everyday prompts. Its rise mixes two things: a persona that says "Yo, 12, easy" instead
of "7 + 5 equals 12." is less likely to produce the base model's wording (a style shift, which is
the point of the fine-tune), and a model that now says "7 + 5 is 15" has lost an ability. Only
the second is damage, and only a checkable answer tells them apart: "What is 7 + 5?" answered in
any voice is right when it says 12 and wrong otherwise.

data/eval/still_answers.jsonl holds 129 easy questions (82 English, 47 Russian: arithmetic, units,
capitals, dates, spelling, short facts), each with every accepted form of its answer ("12",
"twelve"; Russian case forms listed explicitly: "Париж", "Парижа", "Париже"). An answer is right
when one accepted form occurs in it as whole words after normalising both (`normalise`):
"The capital of France is Paris." matches "paris"; "120" and "312" do not match "12". There is no
stemming or fuzzy matching: inflected forms that count are the ones the data lists.

Measured on the base model (SmolLM2-135M-Instruct, greedy, the run's 24 new tokens, no system
prompt; scripts/still_answers_base.py): 52 % right overall (95 % bootstrap interval 43-61 %, 129
items), English 67 % (56-77 %), Russian 26 % (13-38 %). The Russian part is almost all arithmetic
written with digits (11 of 14 right at 32 tokens): the 135M model echoes the other Russian
questions instead of answering them (1 of 33 right, "1 км = сколько метров?"), and a tuned model
that echoes a little more loses the arithmetic first (Falstaff: 25.5 % -> 14.9 %). A tuned model
whose accuracy falls outside the paired interval has lost ability; an NLL rise with accuracy
unchanged is style. Matching is lenient in one direction: a wrong answer that also names the
right one counts ("one gram is equal to 1000 grams" for a kilogram; ~1 in 70 of the base's hits).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from recipe_runner.data.readers import Unreadable, parse_json_line
from recipe_runner.errors import RecipeError

LANGS = {"en", "ru"}

# "1,000", "1 000", "12 000 000" (after NFKC a no-break or thin space is a plain space): one number.
# The separator must be the same throughout and each group exactly three digits ("7, 5" is a list,
# not a number); a run that continues into more digits is not joined. Any other comma between
# digits is a decimal comma: "7,5" is 7.5 (Russian), so it does not count as a "7" or a "5".
_GROUPED = re.compile(r"(?<![\d.,])\d{1,3}(?P<sep>[, ])\d{3}(?:(?P=sep)\d{3})*(?!\d)(?!(?P=sep)\d)")
_TRAILING_ZEROS = re.compile(r"(?<![\d.])(\d+)\.(\d*?)0+(?![\d.])")  # "12.0" -> "12", "2.50" -> "2.5"
_DECIMAL_POINT = "\x00"  # a "." between digits survives punctuation stripping as this, then comes back
_MINUS = "\x01"  # so does a minus sign opening a number: "-12" is not "12"
_DIGIT_LETTER = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)")  # "100cm" -> "100 cm"


def _ungroup(m: re.Match) -> str:
    return m.group(0).replace(m.group("sep"), "")


def _drop_zeros(m: re.Match) -> str:
    return m.group(1) + ("." + m.group(2) if m.group(2) else "")


def normalise(text: str) -> str:
    """Lower-case, NFKC, ё -> е, punctuation and symbols -> spaces, numbers in one spelling.

    'The answer is 1,000.' -> 'the answer is 1000'; 'Ёлка — 12.0 м!' -> 'елка 12 м';
    '«Париж»' -> 'париж'; 'twenty-five' -> 'twenty five'; '100cm' -> '100 cm'; 'x = -5' -> 'x -5'; '7,5' -> '7.5'.
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("ё", "е")
    text = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in text)  # controls: free the markers
    text = _GROUPED.sub(_ungroup, text)
    text = re.sub(r"(?<=\d)[.,](?=\d)", _DECIMAL_POINT, text)  # "3.5" and the Russian "3,5": one token, "3.5"
    text = re.sub(r"(?<!\w)[-\u2212](?=\d)", _MINUS, text)  # "= -5", "(-5)"; not "9-4" (a range or a sum)
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    text = text.replace(_DECIMAL_POINT, ".").replace(_MINUS, "-")
    text = _TRAILING_ZEROS.sub(_drop_zeros, text)
    text = _DIGIT_LETTER.sub(" ", text)
    return " ".join(text.split())


def _contains(words: list[str], part: list[str]) -> bool:
    n = len(part)
    return n > 0 and any(words[i : i + n] == part for i in range(len(words) - n + 1))


def matches(answer: str, accepted: list[str]) -> bool:
    """True when some accepted form occurs in `answer` as a whole run of words, both normalised.

    Word boundaries are token boundaries: "12" is not in "120" or "312", "рим" is not in "римский".
    """
    words = normalise(answer).split()
    return any(_contains(words, normalise(form).split()) for form in accepted)


def accuracy_items(answers: list[str], questions: list[dict]) -> list[float]:
    """1.0 / 0.0 per question (answers in question order): per-prompt items for a bootstrap interval."""
    if len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
    return [1.0 if matches(a, q["answers"]) else 0.0 for a, q in zip(answers, questions)]


def _check(record: object, where: str, key: str, seen: dict[str, str]) -> dict:
    if isinstance(record, Unreadable):
        raise RecipeError(f'{where}: {record.message}; expected an object with "prompt" and "answers" ({key})')
    if not isinstance(record, dict):
        raise RecipeError(f'{where}: expected an object with "prompt" and "answers", got {type(record).__name__} ({key})')
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RecipeError(f'{where}: "prompt" is missing or empty ({key})')
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers:
        raise RecipeError(f'{where}: "answers" must be a non-empty list of accepted answers ({key})')
    for form in answers:
        if not isinstance(form, str) or not normalise(form):
            raise RecipeError(f'{where}: accepted answer {form!r} is empty once normalised; it would match '
                              f'nothing ({key})')
    lang = record.get("lang")
    if lang is not None and lang not in LANGS:
        raise RecipeError(f'{where}: "lang" is {lang!r}; expected one of {sorted(LANGS)} ({key})')
    qid = record.get("id")
    if qid is not None:
        if qid in seen:
            raise RecipeError(f'{where}: id {qid!r} is used twice (first at {seen[qid]}) ({key})')
        seen[qid] = where
    return record


def load_still_answers(path: str | Path, key_for_errors: str) -> list[dict]:
    """The questions of a still-answers file, validated; errors name the file, line and config key."""
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"{key_for_errors}: {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{p}: invalid UTF-8 at byte {exc.start} ({key_for_errors})") from None
    out: list[dict] = []
    seen: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            out.append(_check(parse_json_line(line), f"{p}:{lineno}", key_for_errors, seen))
    if not out:
        raise RecipeError(f"{p}: no questions ({key_for_errors})")
    return out
