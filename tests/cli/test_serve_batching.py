"""serve.engine=transformers batches concurrent requests (use/batching.py): the same replies as one at a time.

In-process on the tiny runs: one Personas generating alone, one batching up to 4 rows; a burst of
requests for different personas (and the base) at once must get exactly the greedy replies each
gets alone (HF generate), with their own max_tokens, penalties and stops; a seeded request the same
reply whatever runs beside it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from recipe_runner.use.personas import Personas
from recipe_runner.use.replies import Reply, Sampling

QUESTIONS = ["What do you think about Kubernetes?", "How should I name my git branches?", "Explain DNS.",
             "Is Rust worth it?", "What is 2 plus 9?", "Good morning!"]


@pytest.fixture(scope="module")
def engines(tiny_runs, tmp_path_factory):
    folders = {name: run / "adapters" / "best" for name, run in tiny_runs.items()}
    cache = str(tmp_path_factory.mktemp("cache"))
    return Personas(folders, cache), Personas(folders, cache, batch=4)


def ask(personas, name: str, question: str, sampling: Sampling) -> tuple[str, Reply]:
    messages = [{"role": "system", "content": personas.system_prompt(name) or ""},
                {"role": "user", "content": question}]
    *pieces, reply = personas.stream(name, messages, sampling)
    return "".join(pieces), reply


def test_a_burst_gets_the_replies_each_gets_alone(engines):
    alone, batched = engines
    greedy = [(name, q, Sampling(temperature=0.0, max_new_tokens=n, repetition_penalty=r))
              for (name, q, n, r) in zip(["alex", "echo", "base", "alex", "echo", "alex"], QUESTIONS,
                                         [24, 5, 16, 24, 9, 24], [1.0, 1.0, 1.3, 1.0, 1.1, 1.0])]
    seeded = ("alex", QUESTIONS[0], Sampling(temperature=0.9, top_p=0.9, max_new_tokens=12, seed=7))
    want = [ask(alone, *c) for c in greedy]
    cases = greedy + [seeded] * 2  # in one burst, joining the batch at different steps
    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(lambda c: ask(batched, *c), cases))
    for (name, question, s), (text, reply), (want_text, want_reply) in zip(greedy, got, want):
        assert reply == want_reply, (name, question)  # greedy: exactly the reply it gets alone
        assert text.strip() == reply.text  # the streamed pieces add up to the reply
        assert reply.completion_tokens <= s.max_new_tokens
    assert got[-1] == got[-2]  # a seed gives the same reply whatever else runs beside it
    assert got[-1][1].completion_tokens <= 12
    assert ask(batched, *seeded) == got[-1]  # and alone
    assert max(batched.batcher.sizes) >= 3, batched.batcher.sizes  # they did run together
    assert any(r.finish_reason == "length" for _, r in got)
    assert len({r.text for _, r in got}) > 3  # personas answer differently: the rows did not share an adapter


def test_an_error_reaches_every_caller_of_the_batch(engines):
    _, batched = engines
    with pytest.raises(Exception):  # a prompt id beyond the vocabulary fails inside generate
        import torch

        list(batched.stream("alex", [], Sampling(temperature=0.0, max_new_tokens=4),
                            ids=torch.tensor([[10**7]])))
    text, reply = ask(batched, "alex", QUESTIONS[0], Sampling(temperature=0.0, max_new_tokens=4))
    assert reply.completion_tokens <= 4  # the batcher carries on
