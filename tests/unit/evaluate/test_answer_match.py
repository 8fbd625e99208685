"""Still answers: the normalised-match scorer and the bundled question file (no model, no tokenizer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO  # noqa: E402
from recipe_runner.errors import RecipeError
from recipe_runner.evaluate.answer_match import accuracy_items, load_still_answers, matches, normalise

STILL_ANSWERS = REPO / "data/eval/still_answers.jsonl"


# ---------------------------------------------------------------- normalise

@pytest.mark.parametrize("text, expected", [
    ("The capital of France is Paris.", "the capital of france is paris"),
    ("  «Париж»!  ", "париж"),
    ("Ёлка, ЁЖИК", "елка ежик"),
    ("It's \"twelve\".", "it s twelve"),
    ("twenty-five", "twenty five"),
    ("1,000 grams", "1000 grams"),
    ("1 000 граммов", "1000 граммов"),
    ("1\u00a0000 граммов", "1000 граммов"),  # a no-break space between digit groups, as Russian typesetting writes it
    ("12,000,000", "12000000"),
    ("12.0", "12"),
    ("100.0 degrees", "100 degrees"),
    ("2.50", "2.5"),
    ("3.5 km", "3.5 km"),
    ("7,5", "7.5"),  # a decimal comma, not a 7 and a 5
    ("7, 5 and 6", "7 5 and 6"),  # a list stays a list
    ("100cm", "100 cm"),
    ("7 + 5 = 12.", "7 5 12"),
    ("x = -5", "x -5"),
    ("9-4", "9 4"),
    ("ＡＢＣ １２", "abc 12"),  # NFKC: full-width letters and digits
    ("line\none\ttab", "line one tab"),
    ("", ""),
    ("?!...", ""),
])
def test_normalise(text, expected):
    assert normalise(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalise_leaves_words_numbers_and_single_spaces(text):
    once = normalise(text)
    assert "  " not in once and once == once.strip()
    # no punctuation or symbol survives except a decimal point or a minus sign inside a number
    for i, c in enumerate(once):
        if unicodedata.category(c)[0] in "PSCZ" and c != " ":
            assert c in ".-", (text, once)
            assert i + 1 < len(once) and once[i + 1].isdigit(), (text, once)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Nd", "No", "Nl"))))
def test_normalise_is_idempotent_on_text_without_numbers(text):
    # (with numbers it need not be: "1/400" -> "1 400", which a second pass would read as 1400)
    once = normalise(text)
    assert normalise(once) == once


# ---------------------------------------------------------------- matches

@pytest.mark.parametrize("answer, accepted", [
    ("The capital of France is Paris.", ["Paris"]),
    ("PARIS!!!", ["paris"]),
    ("7 + 5 = 12.", ["12", "twelve"]),
    ("Twelve.", ["12", "twelve"]),
    ("It is twenty-five.", ["25", "twenty-five"]),
    ("It is twenty five.", ["25", "twenty-five"]),
    ("A kilogram is 1,000 grams.", ["1000"]),
    ("В километре 1 000 метров.", ["1000", "тысяча"]),
    ("The boiling point is 100.0 degrees.", ["100"]),
    ("Water freezes at 0°C.", ["0", "zero"]),
    ("Столица Франции — Париж.", ["Париж", "Парижа", "Париже"]),
    ("Правительство находится в Париже.", ["Париж", "Парижа", "Париже"]),
    ("Трава зелёная.", ["зелёная"]),
    ("Трава зеленая.", ["зелёная"]),  # ё and е are one letter to the matcher
    ("Трава ЗЕЛЁНАЯ.", ["зеленая"]),
    ("'cat' backwards is 'tac'.", ["tac", "t a c"]),
    ("Backwards: T-A-C.", ["tac", "t a c"]),
    ("The first letter is 'B'.", ["b"]),
    ("Washington, D.C. is the capital.", ["Washington"]),
    ("A year has 365 days", ["365"]),
    ("Сколько будет 2 × 6 = 12. Простое", ["12", "двенадцать"]),
])
def test_right_answers_match(answer, accepted):
    assert matches(answer, accepted)


@pytest.mark.parametrize("answer, accepted", [
    ("7 + 5 = 120", ["12"]),  # a longer number is not the number
    ("It is 312.", ["12"]),
    ("12000 metres", ["12"]),
    ("It is 12,000.", ["12"]),
    ("It is 1.2", ["12"]),
    ("x = -12", ["12"]),  # a negative number is not its absolute value
    ("It is 7,5.", ["7"]),  # a Russian decimal, 7.5
    ("It is 7,5.", ["5"]),
    ("Parisian streets", ["Paris"]),  # a word inside a longer word is not the word
    ("римский", ["Рим"]),
    ("В Парижской области", ["Париж", "Парижа", "Париже"]),  # no stemming: only the listed forms count
    ("The capital of France is Lyon.", ["Paris"]),
    ("", ["12"]),
    ("twelve", []),
    ("twenty-six", ["twenty-five"]),
])
def test_wrong_answers_do_not_match(answer, accepted):
    assert not matches(answer, accepted)


def test_a_multi_word_form_must_occur_in_order_and_whole():
    assert matches("There are three thousand six hundred seconds.", ["three thousand six hundred"])
    assert not matches("six hundred and three thousand", ["three thousand six hundred"])
    assert not matches("three thousand", ["three thousand six hundred"])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_a_number_matches_itself_and_no_other(a, b):
    assert matches(f"The answer is {a}.", [str(a)])
    assert matches(f"The answer is {a:,}.", [str(a)])  # with thousands commas
    assert matches(f"Ответ: {a:,}".replace(",", "\u00a0"), [str(a)])  # with no-break spaces
    if a != b:
        assert not matches(f"The answer is {a}.", [str(b)])


def test_accuracy_items_are_one_per_question_in_order():
    qs = [{"prompt": "7 + 5?", "answers": ["12"]}, {"prompt": "Capital of France?", "answers": ["Paris"]},
          {"prompt": "Days in a week?", "answers": ["7", "seven"]}]
    assert accuracy_items(["It is 12.", "Lyon", "Seven days."], qs) == [1.0, 0.0, 1.0]
    assert accuracy_items([], []) == []
    with pytest.raises(ValueError, match="2 answers for 3 questions"):
        accuracy_items(["12", "Paris"], qs)


# ---------------------------------------------------------------- load_still_answers

def _write(tmp_path, lines: list[str]):
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


GOOD = '{"id": "a", "lang": "en", "kind": "arithmetic", "prompt": "What is 7 + 5?", "answers": ["12", "twelve"]}'


def test_load_reads_every_record_and_skips_blank_lines(tmp_path):
    p = _write(tmp_path, [GOOD, "", '{"prompt": "Столица Франции?", "answers": ["Париж"]}'])
    qs = load_still_answers(p, "eval.still_answers")
    assert [q["prompt"] for q in qs] == ["What is 7 + 5?", "Столица Франции?"]
    assert qs[0]["answers"] == ["12", "twelve"]


@pytest.mark.parametrize("bad, why", [
    ("{not json", "broken JSON"),
    ('["a list"]', "expected an object"),
    ('{"answers": ["12"]}', '"prompt" is missing or empty'),
    ('{"prompt": "  ", "answers": ["12"]}', '"prompt" is missing or empty'),
    ('{"prompt": "7 + 5?"}', '"answers" must be a non-empty list'),
    ('{"prompt": "7 + 5?", "answers": []}', '"answers" must be a non-empty list'),
    ('{"prompt": "7 + 5?", "answers": "12"}', '"answers" must be a non-empty list'),
    ('{"prompt": "7 + 5?", "answers": ["12", ""]}', "empty once normalised"),
    ('{"prompt": "7 + 5?", "answers": ["?!"]}', "empty once normalised"),
    ('{"prompt": "7 + 5?", "answers": [12]}', "empty once normalised"),
    ('{"prompt": "7 + 5?", "answers": ["12"], "lang": "de"}', '"lang" is \'de\''),
    ('{"id": "a", "prompt": "again", "answers": ["x"]}', "id 'a' is used twice"),
])
def test_load_names_the_file_line_and_key_of_a_bad_record(tmp_path, bad, why):
    p = _write(tmp_path, [GOOD, bad])
    with pytest.raises(RecipeError) as exc:
        load_still_answers(p, "eval.still_answers")
    message = str(exc.value)
    assert f"{p}:2:" in message and why in message and "eval.still_answers" in message


def test_load_reports_a_missing_or_empty_file(tmp_path):
    with pytest.raises(RecipeError, match=r"eval\.still_answers: .* does not exist"):
        load_still_answers(tmp_path / "nope.jsonl", "eval.still_answers")
    with pytest.raises(RecipeError, match="no questions"):
        load_still_answers(_write(tmp_path, [""]), "eval.still_answers")
    (tmp_path / "bin.jsonl").write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(RecipeError, match="invalid UTF-8"):
        load_still_answers(tmp_path / "bin.jsonl", "eval.still_answers")


# ---------------------------------------------------------------- the bundled file

@pytest.fixture(scope="module")
def bundled():
    return load_still_answers(STILL_ANSWERS, "eval.still_answers")


def test_the_bundled_file_is_complete_and_bilingual(bundled):
    assert 120 <= len(bundled) <= 140
    assert all(q["prompt"].strip() and q["lang"] in {"en", "ru"} and q["answers"] for q in bundled)
    assert all(q["kind"] in {"arithmetic", "units", "capital", "date", "spelling", "fact"} for q in bundled)
    ids = [q["id"] for q in bundled]
    assert len(set(ids)) == len(ids)
    langs = Counter(q["lang"] for q in bundled)
    assert langs["en"] >= 30 and langs["ru"] >= 30
    assert 0.35 <= langs["ru"] / len(bundled) <= 0.40
    assert all(Counter(q["kind"] for q in bundled if q["lang"] == lang).keys()
               == {"arithmetic", "units", "capital", "date", "spelling", "fact"} for lang in ("en", "ru"))


def test_every_accepted_form_matches_a_sentence_built_from_it(bundled):
    for q in bundled:
        for a in q["answers"]:
            sentence = f"Ответ: {a}." if q["lang"] == "ru" else f"The answer is {a}."
            assert matches(sentence, q["answers"]), (q["id"], a)
            assert matches(f"«{a.upper()}»!", [a]), (q["id"], a)


def test_no_question_gives_its_answer_away(bundled):
    # an answer echoed from the prompt ("What is 10 + 10?" -> "10 + 10") must not count as right
    for q in bundled:
        assert not matches(q["prompt"], q["answers"]), q["id"]


def test_no_question_is_in_the_training_prompts(bundled):
    # the general corpus trains on the base model's own answers to its prompts: a question there is not held out
    general = REPO / "data/general/prompts.jsonl"
    seen = {normalise(json.loads(line)["prompt"]) for line in general.read_text(encoding="utf-8").splitlines()
            if line.strip()}
    assert not [q["id"] for q in bundled if normalise(q["prompt"]) in seen]


def test_the_scorers_import_without_torch():
    # evaluate/answer_match.py and evaluate/distinct.py are plain text: usable where torch is not installed
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import recipe_runner.evaluate.answer_match, recipe_runner.evaluate.distinct")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stderr
