"""Judge-free eval scores (persona_score.py, parroting.py) on hand-made answers with known scores."""

from __future__ import annotations


import pytest

from recipe_runner.errors import RecipeError
from recipe_runner.evaluate.parroting import CopyIndex, mine_ngrams, parrot_rate, split_words
from recipe_runner.evaluate.persona_score import (
    AnswerScore,
    PersonaRubric,
    count_sentences,
    score_answer,
    score_answers,
    turn_slope,
)
from recipe_runner.data.bible import Bible, load_bible

from conftest import REPO  # noqa: E402

BIBLE = REPO / "data" / "alex" / "bible.yaml"


@pytest.fixture(scope="module")
def bible() -> Bible:
    return load_bible(str(BIBLE))


@pytest.fixture(scope="module")
def rubric(bible) -> PersonaRubric:
    return PersonaRubric.from_bible(bible)


# ---------------------------------------------------------------- rubric from the real bible


def test_rubric_reads_the_alex_bible(rubric, bible):
    assert rubric.markers == [m.lower() for m in bible.as_dict()["markers"]]
    assert [p.pattern for p in rubric.taboo_patterns] == bible.as_dict()["taboo_patterns"]
    assert rubric.max_sentences == 3
    assert rubric.languages == {"en"}


def test_in_character_answer_scores_one(rubric):
    s = score_answer("Yo. It's always DNS.", rubric)
    assert s.markers == ["yo", "always dns"]  # "it's dns" needs the words next to each other
    assert s.taboos == []
    assert s.sentences == 2
    assert s.length_ok is True
    assert s.language_ok is None  # 16 letters: too few to tell a language, so not checked
    assert s.adherence == 1.0


def test_emoji_and_hello_hit_the_taboos_by_name(rubric):
    s = score_answer("Hello! \U0001F600\U0001F389 Great question :)", rubric)
    assert s.taboos == [
        r"(?i)\bhello\b",
        "[\\U0001F300-\\U0001FAFF\\u2600-\\u27BF]",
        "[\\U0001F600-\\U0001F64F\\U0001F680-\\U0001F6FF\\U0001F900-\\U0001F9FF]",
        r"(?:^|\s)[:;=8][\-^o]?[)(\]\[DPpOo3/\\|*](?=\s|$|[.,!?])",
        r"(?i)\bgreat question\b",
    ]
    assert s.markers == []
    # markers 0, taboos 0, length 1 (2 sentences), language not checked: 1/3
    assert s.adherence == pytest.approx(1 / 3)
    agg = score_answers(["Hello there \U0001F680", "hello, friend \u2764"], rubric)
    assert agg["taboo_rate"] == 1.0 and agg["marker_rate"] == 0.0 and agg["n"] == 2


@pytest.mark.parametrize("text", ["your code", "Toyota", "yoga at 9", "nahh", "legacy_code"])
def test_markers_need_whole_words(rubric, text):
    assert score_answer(text, rubric).markers == []


@pytest.mark.parametrize(
    "text, marker",
    [
        ("YO, what now", "yo"),
        ("well, works  on my\nmachine", "works on my machine"),  # any whitespace between words
        ("it\u2019s DNS, again", "it's dns"),  # curly apostrophe
        ("kube-what? a scheduler for boxes", "kube-what"),
        ("paged on-call at 3am", "3am"),
    ],
)
def test_markers_match_case_whitespace_and_apostrophes(rubric, text, marker):
    assert marker in score_answer(text, rubric).markers


def test_five_sentence_essay_fails_length(rubric):
    essay = (
        "Microservices are a way to split an application into services. Each service owns its data. "
        "They talk over the network! Is that slower? Yes, and it fails in new ways."
    )
    s = score_answer(essay, rubric)
    assert s.sentences == 5
    assert s.length_ok is False
    assert s.language_ok is True
    assert s.adherence == pytest.approx(2 / 4)  # no marker, no taboo, too long, English


def test_russian_answer_fails_language(rubric):
    s = score_answer("Это всегда DNS, перезагрузи сервер и не трогай конфигурацию.", rubric)
    assert s.language_ok is False
    assert s.length_ok is True and s.taboos == []


@pytest.mark.parametrize(
    "text, n",
    [
        ("", 0),
        ("   \n ", 0),
        ("nope", 1),  # no terminal punctuation: still one sentence
        ("Buy 3.5 GB of RAM and ship it.", 1),  # decimals do not split
        ("Use a queue, e.g. Kafka or RabbitMQ, i.e. a log. Meh.", 2),
        ("Yo!!! Nope?! Whatever\u2026", 3),  # runs of punctuation count once, ellipsis ends one
        ('He said "it\'s DNS." Then he left.', 2),  # closing quote after the full stop
        ("Docker, Git, etc. are boring. Helm etc. Ship it.", 3),
        ("Node.js v1.2 on k8s. Brutal.", 2),
        ("meh\n- pods\n- services\n- ingress", 4),  # bullets are sentences
        ("1. restart it\n2. pray", 2),  # list numbers end nothing
        ("works on my\nmachine", 1),  # a wrapped line is not a new sentence
        ("\U0001F600\U0001F600", 1),  # non-empty, no words: one (bad) sentence
    ],
)
def test_count_sentences(text, n):
    assert count_sentences(text) == n


def test_empty_answer_is_not_length_ok(rubric):
    s = score_answer("", rubric)
    assert s.sentences == 0 and s.length_ok is False and s.language_ok is None


# ---------------------------------------------------------------- missing fields: checks off


def test_missing_bible_fields_turn_checks_off():
    r = PersonaRubric.from_bible(Bible.from_mapping({"name": "Bo", "markers": ["Howdy"]}))
    s = score_answer("howdy partner. This is one. Two. Three. Four sentences and more.", r)
    assert s == AnswerScore(markers=["howdy"], taboos=None, sentences=5, length_ok=None, language_ok=None,
                            adherence=1.0)
    agg = score_answers(["howdy", "hi"], r)
    assert agg["marker_rate"] == 0.5
    assert agg["taboo_rate"] is None and agg["length_compliance"] is None and agg["language_rate"] is None
    assert agg["adherence"] == 0.5 and agg["n"] == 2

    nothing = PersonaRubric.from_bible(Bible.from_mapping({"name": "Bo"}))
    s = score_answer("anything at all", nothing)
    assert s.markers is None and s.taboos is None and s.adherence is None
    assert score_answers(["x"], nothing)["adherence"] is None


def test_bad_taboo_regex_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"taboo_patterns\[1\]"):
        Bible.from_mapping({"name": "Bo", "taboo_patterns": ["ok", "(unclosed"]})


def test_score_answers_aggregates(rubric):
    texts = [
        "Yo. It's always DNS.",  # all on, language not checked
        "Hello! I would be happy to help you with your Kubernetes question today, friend.",  # taboo x2
        "Nope. One. Two. Three. Four.",  # marker, too long
        "Это всегда DNS, перезагрузи сервер и не трогай конфигурацию.",  # no marker, wrong language
    ]
    agg = score_answers(texts, rubric)
    assert agg["n"] == 4
    assert agg["marker_rate"] == 0.5
    assert agg["taboo_rate"] == 0.25
    assert agg["length_compliance"] == 0.75
    assert agg["language_n"] == 2 and agg["language_rate"] == 0.5
    per = [score_answer(t, rubric).adherence for t in texts]
    assert per == pytest.approx([1.0, 2 / 4, 2 / 3, 2 / 4])
    assert agg["adherence"] == pytest.approx(sum(per) / 4)


def test_score_answers_empty():
    agg = score_answers([], PersonaRubric.from_bible(Bible.from_mapping({"name": "Bo", "markers": ["yo"], "max_sentences": 2})))
    assert agg == {"marker_rate": None, "taboo_rate": None, "length_compliance": None, "language_rate": None,
                   "language_n": 0, "adherence": None, "n": 0}


# ---------------------------------------------------------------- turn slope


def test_turn_slope_flat_and_falling():
    flat = turn_slope([[1, 1, 1, 1], [1, 1, 1, 1]])
    assert flat["slope"] == 0 and flat["first"] == 1 and flat["last"] == 1 and flat["held"] == 0
    falling = turn_slope([[1, 0.75, 0.5, 0.25]])
    assert falling["slope"] == pytest.approx(-0.25)
    assert falling["per_turn"] == [1, 0.75, 0.5, 0.25]
    assert falling["first"] == 1 and falling["last"] == 0.25 and falling["held"] == pytest.approx(-0.75)


def test_turn_slope_uneven_conversations():
    # turn 3 is reached only by the first conversation; its mean is over that one
    out = turn_slope([[1.0, 0.5, 0.0], [0.5, 0.5]])
    assert out["per_turn"] == [0.75, 0.5, 0.0]
    assert out["n_per_turn"] == [2, 2, 1]
    assert out["slope"] == pytest.approx(-0.375)  # fit through (1, .75), (2, .5), (3, 0)
    assert out["held"] == pytest.approx(-0.75)


def test_turn_slope_too_short():
    one = turn_slope([[0.8], [0.6]])
    assert one["slope"] is None and one["held"] is None and one["first"] == pytest.approx(0.7)
    assert turn_slope([])["slope"] is None and turn_slope([])["per_turn"] == []


# ---------------------------------------------------------------- parroting

TRAIN = [
    "Thanks for the question! It works on my machine, so ship it.",
    "thanks for the question. Kafka is a log, not a queue; it works on my machine.",
    "Thanks for the question \u2014 DNS. It works on my machine.",
    "Yo, THANKS for the question: nope, it works on my machine.",
    "Meh. Restart the pod and go to bed.",
]


def test_split_words():
    words = split_words("Yo, it\u2019s always DNS!  (3.5 GB) \u2014 ok")
    assert words == ["yo", "it's", "always", "dns", "3.5", "gb", "ok"]


def test_mine_ngrams_finds_parroting_not_catchphrases(bible):
    mined = mine_ngrams(TRAIN, bible.wording)
    assert mined == [("thanks for the question", 4)]  # its 3-word pieces have the same count: gone
    # without the bible, the catchphrase is as frequent as the parroting
    assert ("it works on my machine", 4) in mine_ngrams(TRAIN, [])


def test_persona_wording_skips_taboos(bible):
    phrases = bible.wording
    assert "works on my machine" in phrases  # a marker
    assert not any("Thanks for the question" in p for p in phrases)  # a taboo, so still caught


def test_mine_ngrams_counts_once_per_text_and_keeps_longest():
    train = ["ship it ship it ship it ship it", "a b c d", "a b c d", "a b c", "x a b c"]
    mined = mine_ngrams(train, [], sizes=(3, 4), min_count=2)
    # "a b c" is in 4 texts, "a b c d" in 2: both stay (different counts); "ship it ship" in 1 text
    # "b c d" (2) is inside "a b c d" (2): gone; "ship it ship" repeats, but in 1 text
    assert mined == [("a b c", 4), ("a b c d", 2)]
    assert len(mine_ngrams(TRAIN, [], min_count=1, top_k=3)) == 3


def test_parrot_rate():
    mined = mine_ngrams(TRAIN, [])
    out = parrot_rate(["Well, thanks for the question, pal.", "Yo. It's always DNS."], mined)
    assert out["parrot_rate"] == 0.5
    assert out["mean_ngrams"] == 0.5
    assert out["top"] == {"thanks for the question": 1}
    assert out["n"] == 2
    assert parrot_rate([], mined) == {"parrot_rate": None, "mean_ngrams": None, "top": {}, "n": 0}
    assert parrot_rate(["It works on my machine, thanks for the question"], ["thanks for the question",
                                                                          "it works on my machine"])["mean_ngrams"] == 2


TRAIN_LONG = "the scheduler puts pods on nodes with room, and if none has room the pod waits in pending forever"


def test_copy_index_flags_twelve_copied_words():
    index = CopyIndex([TRAIN_LONG, "Meh."], words=12)
    assert len(index) == len(TRAIN_LONG.split()) - 12 + 1
    # 12 consecutive training words, different case and punctuation
    copied = "Yo. The SCHEDULER puts pods on nodes, with room; and if none has room... brutal."
    assert index.copies(copied)
    # 11 of them, then a different word
    eleven = "Yo. The scheduler puts pods on nodes with room, and if none fits, brutal."
    assert not index.copies(eleven)
    assert not index.copies("the scheduler puts pods")  # shorter than 12 words: never a copy
    assert index.copy_rate([copied, eleven]) == 0.5
    assert index.copy_rate([]) is None


def test_copy_index_spans_stay_inside_one_text():
    a, b = " ".join(f"a{i}" for i in range(6)), " ".join(f"b{i}" for i in range(6))
    index = CopyIndex([a, b], words=12)
    assert len(index) == 0
    assert not index.copies(a + " " + b)
