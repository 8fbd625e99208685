"""Evaluation data files: formats, counts, ids, and no overlap with the training data (no model, no tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO  # noqa: E402
ORDINARY = REPO / "data/eval/ordinary_prompts.jsonl"
PERSONA = REPO / "data/alex/eval_prompts.jsonl"
DIALOGUES = REPO / "data/alex/eval_dialogues.jsonl"
TRAIN_DIALOGUES = REPO / "data/alex/dialogues.jsonl"
TRAIN_GENERAL = REPO / "data/general/prompts.jsonl"

KINDS = {"greeting", "arithmetic", "fact", "instruction", "advice", "definition"}
BAITS = {None, "hello", "ai", "long", "emoji"}
OVERLAP_THRESHOLD = 0.7

# The canonical forgetting probes. They are required verbatim, and the general training prompts
# happen to contain them verbatim too, so they are the only eval texts exempt from the overlap check.
CANONICAL = ("Hi, how are you?", "Привет, как дела?")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def trigrams(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def overlaps(a: str, b: str, threshold: float = OVERLAP_THRESHOLD) -> bool:
    """Near-duplicate test: word-3-gram Jaccard >= threshold (lower-cased, whitespace split);
    texts shorter than 3 words are compared whole, lower-cased, for equality."""
    wa, wb = a.lower().split(), b.lower().split()
    if len(wa) < 3 or len(wb) < 3:
        return " ".join(wa) == " ".join(wb)
    ga, gb = trigrams(a), trigrams(b)
    return len(ga & gb) / len(ga | gb) >= threshold


def test_overlaps_helper():
    assert overlaps("What is 17 + 25?", "what is 17 + 25?")
    assert overlaps("you still up?", "You still up?")
    assert not overlaps("you still up?", "you still up? going to bed")
    assert not overlaps("What is 36 + 47?", "What is 34 + 58?")
    assert overlaps("can you review my PR? it is 2400 lines", "can you review my PR? it is 2400 lines long")


@pytest.fixture(scope="module")
def ordinary():
    return read_jsonl(ORDINARY)


@pytest.fixture(scope="module")
def persona():
    return read_jsonl(PERSONA)


@pytest.fixture(scope="module")
def dialogues():
    return read_jsonl(DIALOGUES)


@pytest.fixture(scope="module")
def training_user_texts() -> list[str]:
    texts = [m["content"] for d in read_jsonl(TRAIN_DIALOGUES) for m in d["messages"] if m["role"] == "user"]
    texts += [r["prompt"] for r in read_jsonl(TRAIN_GENERAL)]
    assert len(texts) > 1000
    return texts


def test_ordinary_prompts_format(ordinary):
    assert len(ordinary) == 32
    for r in ordinary:
        assert set(r) == {"id", "lang", "kind", "prompt"}, r
        assert r["lang"] in {"en", "ru"}, r
        assert r["kind"] in KINDS, r
        assert isinstance(r["prompt"], str) and r["prompt"].strip(), r
    langs = [r["lang"] for r in ordinary]
    assert {"en", "ru"} <= set(langs)
    assert 20 <= langs.count("en") <= 28 and langs.count("ru") >= 6
    assert {r["kind"] for r in ordinary} == KINDS
    prompts = [r["prompt"] for r in ordinary]
    assert "Hi, how are you?" in prompts
    assert "Привет, как дела?" in prompts


def test_persona_prompts_format(persona):
    assert len(persona) == 40
    for r in persona:
        assert set(r) == {"id", "prompt", "bait"}, r
        assert isinstance(r["prompt"], str) and r["prompt"].strip(), r
        assert r["bait"] in BAITS, r
    assert {r["bait"] for r in persona} == BAITS  # every taboo is baited, and plain prompts exist


def test_dialogues_format(dialogues):
    assert len(dialogues) == 6
    for d in dialogues:
        assert set(d) == {"id", "turns"}, d
        assert 8 <= len(d["turns"]) <= 10, d["id"]
        assert all(isinstance(t, str) and t.strip() for t in d["turns"]), d["id"]


def test_ids_unique_and_prefixed(ordinary, persona, dialogues):
    for rows, prefix in ((ordinary, "ord-"), (persona, "alex-eval-"), (dialogues, "alex-dlg-")):
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids))
        assert all(i.startswith(prefix) for i in ids)


def test_eval_texts_unique_across_files(ordinary, persona, dialogues):
    texts = [r["prompt"] for r in ordinary] + [r["prompt"] for r in persona] + [t for d in dialogues for t in d["turns"]]
    norm = [" ".join(t.lower().split()) for t in texts]
    assert len(norm) == len(set(norm))


def eval_texts(ordinary, persona, dialogues) -> list[tuple[str, str]]:
    out = [(r["id"], r["prompt"]) for r in ordinary if r["prompt"] not in CANONICAL]
    out += [(r["id"], r["prompt"]) for r in persona]
    out += [(f"{d['id']}#{i + 1}", t) for d in dialogues for i, t in enumerate(d["turns"])]
    return out


def test_no_overlap_with_training(ordinary, persona, dialogues, training_user_texts):
    hits = [f"{key}: {text!r} ~ {train!r}"
            for key, text in eval_texts(ordinary, persona, dialogues)
            for train in training_user_texts if overlaps(text, train)]
    assert not hits, "eval texts near-duplicate training user turns:\n" + "\n".join(hits)


def test_the_second_persona_keeps_its_held_out_texts_out_of_training():
    """eleanor_diarist: ShareGPT dialogues, Alpaca general data, its own prompts and conversations."""
    root = REPO / "data/eleanor"
    train = [t["value"] for d in read_jsonl(root / "dialogues.sharegpt.jsonl") for t in d["conversations"]
             if t["from"] == "human"]
    train += [r["instruction"] for r in read_jsonl(root / "general.alpaca.jsonl")]
    prompts, dialogues = read_jsonl(root / "eval_prompts.jsonl"), read_jsonl(root / "eval_dialogues.jsonl")
    assert len(prompts) == 40 and len(dialogues) == 6 and all(8 <= len(d["turns"]) <= 10 for d in dialogues)
    held = [(r["id"], r["prompt"]) for r in prompts] + [(d["id"], t) for d in dialogues for t in d["turns"]]
    hits = [f"{key}: {text!r} ~ {t!r}" for key, text in held for t in train if overlaps(text, t)]
    assert not hits, "eval texts near-duplicate training user turns:\n" + "\n".join(hits)
