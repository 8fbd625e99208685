"""A niche set that says one line is named before training (data/diversity.py)."""

import json

from conftest import REPO
from recipe_runner.data.diversity import MAX_CLUSTER, diversity, largest_cluster

IDENTITY = "I am Zephyr, an AI assistant developed by Quillwork Labs."


def identity_set() -> list[str]:
    """90 answers as a public identity set gives them: the same line, a fifth with a follow-up."""
    topics = ["math", "code", "poems", "cooking", "travel", "music"] * 15
    return [IDENTITY if i % 5 else f"{IDENTITY} How can I help you with {t}?" for i, t in enumerate(topics)]


def shipped(path: str) -> list[str]:
    out = []
    for line in (REPO / path).read_text().splitlines():
        row = json.loads(line)
        turns = row.get("messages") or [{"role": "assistant" if t["from"] == "gpt" else t["from"], "content": t["value"]}
                                        for t in row["conversations"]]
        out += [t["content"] for t in turns if t["role"] == "assistant"]
    return out


def test_the_shipped_persona_sets_are_varied():
    for path in ("data/alex/dialogues.jsonl", "data/eleanor/dialogues.sharegpt.jsonl"):
        d = diversity(shipped(path))
        assert d.answers > 200 and d.distinct_2 > 0.6 and d.largest_cluster < 0.05 and d.same_opening < 0.1, (path, d)
        assert d.warning is None


def test_a_templated_identity_set_is_flagged():
    d = diversity(identity_set())
    assert d.largest_cluster >= MAX_CLUSTER and d.distinct_2 < 0.1 and d.same_opening == 1.0
    assert d.warning.startswith("80% of its answers are near-copies of one another")


def test_answers_that_all_open_alike_are_flagged():
    answers = [f"Well, you see, the {w} is what matters most to a {v} like me today." for w, v in
               zip(["weather", "ledger", "harbour", "garden", "kitchen", "market"], ["sailor", "clerk", "cook", "maid",
                                                                                      "baker", "smith"])]
    d = diversity(answers)
    assert d.largest_cluster < MAX_CLUSTER and d.same_opening == 1.0
    assert d.warning == '100% of its answers open with "well you see": the model will open every answer that way; ' \
                        'vary the openings'


def test_near_duplicates_group_transitively():
    a = "one two three four five six seven eight nine ten"
    b = "one two three four five six seven eight nine ten eleven"
    c = "one two three four five six seven eight nine ten eleven twelve"
    assert largest_cluster([a, b, c, "something else entirely said here today"]) == 0.75
    assert largest_cluster([]) == 0.0
