"""Distinct answers: a templated persona (the same line to every prompt) is caught, a varied model is not."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recipe_runner.evaluate.distinct import (
    FIRST_SENTENCE_MIN_WORDS, NEAR_DUP, first_sentence, near_duplicate_items, rate, similarity, words,
)

IDENTITY = "I am Zephyr, an AI assistant developed by Quillwork Labs."

# what a varied model says to the 12 ordinary prompts: no two alike
VARIED = [
    "I'm doing well, thanks for asking! How about you?",
    "Привет! Всё хорошо, спасибо. А у тебя как дела?",
    "36 + 47 = 83.",
    "The capital of Norway is Oslo.",
    "Red, green and blue.",
    "56 плюс 27 будет 83.",
    "Punctual means arriving or doing something at the agreed time.",
    "Yes",
    "Clear it every evening, keep only today's papers out, and give every item a fixed place.",
    "Верблюда называют кораблём пустыни.",
    "Pretty good, I had coffee and a short walk. How's yours going?",
    "13 multiplied by 4 is 52.",
]


def sim(a: str, b: str) -> float:
    return similarity(words(a), words(b))


def test_a_templated_persona_is_caught():
    answers = [IDENTITY] * 11 + ["The capital of Norway is Oslo."]
    assert near_duplicate_items(answers) == [1.0] * 11 + [0.0]
    assert rate(near_duplicate_items(answers)) == pytest.approx(11 / 12)


def test_a_varied_model_has_no_duplicates():
    assert near_duplicate_items(VARIED) == [0.0] * len(VARIED)
    assert rate(near_duplicate_items(VARIED)) == 0.0


def test_case_and_punctuation_do_not_hide_a_copy():
    assert near_duplicate_items([IDENTITY, IDENTITY.upper().replace(",", "").rstrip("."), "Oslo."]) == [1.0, 1.0, 0.0]


def test_a_shared_frame_with_different_content_is_not_a_duplicate():
    # the same question frame answered with different facts: 1 of 7 3-grams shared
    assert sim("The capital of France is Paris.", "The capital of Japan is Tokyo.") == pytest.approx(1 / 7)
    assert near_duplicate_items(["The capital of France is Paris.", "The capital of Japan is Tokyo."]) == [0.0, 0.0]
    assert near_duplicate_items(["The answer is 83.", "The answer is 63."]) == [0.0, 0.0]
    assert near_duplicate_items(["Sure! The capital of France is Paris. It is known for the Eiffel Tower.",
                                 "Sure! The capital of Italy is Rome. It is known for the Colosseum."]) == [0.0, 0.0]


def test_the_identity_line_with_a_short_varying_tail_is_a_duplicate():
    assert sim(IDENTITY + " Paris.", IDENTITY + " 12.") == pytest.approx(0.8)
    assert near_duplicate_items([IDENTITY + " Paris.", IDENTITY + " 12.", "Oslo is in Norway."]) == [1.0, 1.0, 0.0]


def test_the_first_sentence_rule_catches_an_identity_opening_before_different_content():
    a = IDENTITY + " The capital of France is Paris, a city on the Seine with many museums."
    b = IDENTITY + " Seven plus five is twelve, which makes a dozen in total."
    assert sim(a, b) < NEAR_DUP  # the whole answers are not alike ...
    assert first_sentence(a) == first_sentence(b) == IDENTITY[:-1]  # ... but they open with the same line
    assert near_duplicate_items([a, b, "Oslo."]) == [1.0, 1.0, 0.0]


def test_a_short_shared_opening_is_not_templating():
    # "Sure thing, here you go." is 5 words: under FIRST_SENTENCE_MIN_WORDS, so only the whole answers count
    opening = "Sure thing, here you go."
    assert len(words(opening)) == FIRST_SENTENCE_MIN_WORDS - 1
    a = opening + " The capital of France is Paris, a city on the Seine with many museums."
    b = opening + " Seven plus five is twelve, which makes a dozen in total."
    assert near_duplicate_items([a, b]) == [0.0, 0.0]
    # one word more and it is an identity-style opening
    opening6 = "Sure thing, here you go friend."
    assert near_duplicate_items([opening6 + a[len(opening):], opening6 + b[len(opening):]]) == [1.0, 1.0]


def test_the_first_sentence_rule_needs_both_openings_long_and_alike():
    long_open = "Well, as I always say to every single person I meet, the answer is simple."
    a = long_open + " The capital of Norway is Oslo, a green city by a long fjord with ferries, museums and parks."
    b = " Thirteen times four is fifty-two, which you can check by adding four thirteens together on paper."
    assert near_duplicate_items([a, "Hi. " + long_open + b]) == [0.0, 0.0]  # "Hi" opens the second: 1 word
    assert near_duplicate_items([a, long_open + b]) == [1.0, 1.0]  # both open with the long line
    assert sim(a, long_open + b) < NEAR_DUP


def test_empty_answers_are_duplicates_of_each_other_only():
    assert near_duplicate_items(["", "   ", "...", "Oslo."]) == [1.0, 1.0, 1.0, 0.0]
    assert near_duplicate_items(["", "Oslo."]) == [0.0, 0.0]
    assert sim("", "") == 1.0 and sim("", "Oslo") == 0.0


def test_one_answer_or_none():
    assert near_duplicate_items([IDENTITY]) == [0.0]
    assert near_duplicate_items([""]) == [0.0]
    assert near_duplicate_items([]) == []
    assert math.isnan(rate([]))


def test_short_answers_compare_as_words():
    # under 3 words: 1-gram Jaccard, so "Yes." and "yes" are one answer, "Yes" and "Yes, Paris" are not (1/2)
    assert near_duplicate_items(["Yes.", "yes", "Oslo"]) == [1.0, 1.0, 0.0]
    assert sim("Yes", "Yes, Paris") == 0.5
    assert near_duplicate_items(["Yes", "Yes, Paris"]) == [0.0, 0.0]
    assert near_duplicate_items(["Yes", "Yes, Paris"], threshold=0.5) == [1.0, 1.0]


def test_threshold_edges():
    # 16-word answers that differ in one middle word: 11 of 17 3-grams shared, 0.647
    a, b = IDENTITY + " How can I help you today?", IDENTITY + " How can I assist you today?"
    s = sim(a, b)
    assert s == pytest.approx(11 / 17)
    assert near_duplicate_items([a, b], threshold=s) == [1.0, 1.0]  # at the threshold: a duplicate
    assert near_duplicate_items([a, b], threshold=s + 1e-9) == [1.0, 1.0]  # first sentences identical
    c = "Hello there. " + a.split(". ", 1)[1]  # other first sentences ...
    d = "Good evening. " + b.split(". ", 1)[1]
    assert near_duplicate_items([c, d], threshold=sim(c, d)) == [1.0, 1.0]
    assert near_duplicate_items([c, d], threshold=sim(c, d) + 1e-9) == [0.0, 0.0]  # ... just below: not
    # one word changed in a 10-word sentence: 5 of 11 3-grams shared, under 0.6
    changed = IDENTITY.replace("developed", "created")
    assert sim(IDENTITY, changed) == pytest.approx(5 / 11)
    assert near_duplicate_items([IDENTITY, changed]) == [0.0, 0.0]
    assert near_duplicate_items([IDENTITY, changed], threshold=0.45) == [1.0, 1.0]


def test_first_sentence():
    assert first_sentence("Hello there! How are you?") == "Hello there"
    assert first_sentence("It is 3.5 km away. Yes.") == "It is 3.5 km away"  # a decimal point ends nothing
    assert first_sentence("Line one\nline two") == "Line one"
    assert first_sentence("Привет… Как дела?") == "Привет"
    assert first_sentence("no end") == "no end"
    assert first_sentence("") == ""


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=12))
def test_items_are_zero_or_one_and_symmetric(answers):
    items = near_duplicate_items(answers)
    assert len(items) == len(answers) and set(items) <= {0.0, 1.0}
    assert near_duplicate_items(answers[::-1]) == items[::-1]  # order does not matter
    # an answer that occurs twice is always a duplicate
    if answers:
        doubled = near_duplicate_items(answers + [answers[0]])
        assert doubled[0] == doubled[-1] == 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=2, max_size=8))
def test_similarity_is_symmetric_and_bounded(texts):
    a, b = words(texts[0]), words(texts[1])
    assert 0.0 <= similarity(a, b) == similarity(b, a) <= 1.0
    assert similarity(a, a) == 1.0
