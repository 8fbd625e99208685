"""The synthesize stage's generators: the endpoint client against a scripted local server (real
HTTP: retries, refusals, malformed answers, the budget under concurrency) and the local model."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recipe_runner.synthesize.budget import Budget
from recipe_runner.synthesize.endpoint import EndpointGenerator, reservation
from recipe_runner.synthesize.requests import BudgetExhausted, GeneratorUnavailable, Request
from local_server import serving

KEY = "sk-test-5ecret"
USAGE = (10, 5)  # prompt and completion tokens of every default answer


@dataclass
class Canned:
    status: int = 200
    body: object = None  # a dict (sent as JSON), a str, or None for the default answer
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


class Script:
    """What the scripted endpoint answers (the canned responses in order, then default answers) and saw."""

    def __init__(self, canned: list[Canned], delay: float):
        self.canned, self.delay = list(canned), delay
        self.seen: list[tuple[str, str | None, dict]] = []  # (path, Authorization, JSON body)
        self.lock = threading.Lock()
        self.active = self.peak = 0  # requests being answered now / at most at once

    def next(self, path: str, auth: str | None, body: dict) -> Canned:
        with self.lock:
            self.seen.append((path, auth, body))
            self.active += 1
            self.peak = max(self.peak, self.active)
            return self.canned.pop(0) if self.canned else Canned(delay=self.delay)

    def done(self) -> None:
        with self.lock:
            self.active -= 1


def default_answer(body: dict) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": f"re: {body['messages'][-1]['content']}"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": USAGE[0], "completion_tokens": USAGE[1]}}


@contextlib.contextmanager
def scripted_endpoint(*canned: Canned, delay: float = 0.0):
    """Yields (base_url, script): an OpenAI-compatible chat endpoint on 127.0.0.1 that answers as scripted."""
    script = Script(list(canned), delay)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            answer = script.next(self.path, self.headers["Authorization"], body)
            try:
                time.sleep(answer.delay)
                payload = answer.body if answer.body is not None else default_answer(body)
                raw = (json.dumps(payload) if isinstance(payload, dict) else payload).encode()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            finally:
                script.done()

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that timed out closed the socket before the delayed answer

    with serving(Server(("127.0.0.1", 0), Handler)) as url:
        yield url, script


def generator(url: str, budget: Budget | None = None, **kwargs) -> EndpointGenerator:
    options = {"temperature": 0.9, "top_p": 0.95, "seed": 3, "backoff_s": 0.01, "api_key": KEY, **kwargs}
    return EndpointGenerator(url, "persona-writer", budget=budget or Budget(None, None), **options)


def requests(n: int, content: str = "hello") -> list[Request]:
    return [Request(f"s{i:04d}", [{"role": "user", "content": f"{content} {i}"}], 16) for i in range(n)]


def run(gen: EndpointGenerator, reqs: list[Request]) -> list:
    replies = []
    try:
        gen.complete(reqs, replies.append)
    finally:
        gen.close()
    return replies


@pytest.mark.parametrize("status, headers, backoff_s", [
    (429, {"Retry-After": "0"}, 10.0),  # Retry-After wins over a 10 s backoff
    (500, {}, 0.01),
])
def test_rate_limit_and_server_error_are_retried(status, headers, backoff_s, caplog):
    with scripted_endpoint(Canned(status, {"error": {"message": "busy"}}, headers)) as (url, script):
        budget = Budget(None, None)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="recipe_runner.synthesize.endpoint"):
            replies = run(generator(url, budget, backoff_s=backoff_s), requests(1))
    assert time.monotonic() - started < 3
    assert len(script.seen) == 2
    [reply] = replies
    assert (reply.key, reply.text, reply.finish_reason, reply.attempts) == ("s0000", "re: hello 0", "stop", 2)
    assert (reply.prompt_tokens, reply.completion_tokens, reply.error) == (*USAGE, None)
    assert budget.spent_requests == 2  # both attempts
    assert budget.spent_tokens == sum(USAGE)  # the refused attempt settled to 0
    [line] = [r.getMessage() for r in caplog.records]
    assert f"HTTP {status}; retry 1 of 4" in line and KEY not in line


def test_retries_exhausted_names_the_url_not_the_key():
    with scripted_endpoint(*[Canned(503, "overloaded")] * 5) as (url, script):
        budget = Budget(None, None)
        with pytest.raises(GeneratorUnavailable) as err:
            run(generator(url, budget, retries=2), requests(1))
    assert len(script.seen) == 3
    message = str(err.value)
    assert f"generator {url}/chat/completions: HTTP 503 after 3 attempts" in message
    assert KEY not in message and "\n" not in message
    assert (budget.spent_requests, budget.spent_tokens) == (3, 0)


def test_timeout_is_retried_and_keeps_its_reservation():
    with scripted_endpoint(Canned(delay=1.0)) as (url, script):
        budget = Budget(None, None)
        [reply] = run(generator(url, budget, timeout_s=0.3), reqs := requests(1))
    assert len(script.seen) == 2
    assert (reply.text, reply.attempts) == ("re: hello 0", 2)
    # the timed-out attempt may have cost the server tokens: its reservation stays spent
    assert (budget.spent_requests, budget.spent_tokens) == (2, reservation(reqs[0]) + sum(USAGE))


def test_malformed_answers_are_replies_with_errors():
    with scripted_endpoint(Canned(body="<html>upstream error</html>"), Canned(body={"choices": []}),
                           Canned(body={"choices": [{"message": {"content": " "}, "finish_reason": "stop"}]}),
                           Canned(body={"choices": [{"message": {"content": None}, "finish_reason": "length"}]})
                           ) as (url, script):
        budget = Budget(None, None)
        replies = run(generator(url, budget, max_concurrent=1), reqs := requests(4))
    assert len(script.seen) == 4  # none retried
    got = {r.key: (r.text, r.finish_reason, r.error, r.attempts) for r in replies}
    assert got == {"s0000": (None, None, "answer is not JSON", 1),
                   "s0001": (None, None, "no choices in the answer", 1),
                   "s0002": (None, "stop", "empty content", 1),
                   "s0003": (None, "length", "no text content in the answer", 1)}
    assert budget.spent_tokens == sum(map(reservation, reqs))  # no usage reported: reservations kept


def test_redirect_is_not_followed_and_refusals_say_what_to_fix():
    with scripted_endpoint() as (elsewhere, other), scripted_endpoint(
            Canned(302, "", {"Location": f"{elsewhere}/chat/completions"}), Canned(401, "bad key"),
            Canned(404, {"error": {"message": f"The model `persona-writer` does not exist ({KEY})"}})
    ) as (url, script):
        messages = []
        for _ in range(3):
            with pytest.raises(GeneratorUnavailable) as err:
                run(generator(url), requests(1))
            messages.append(str(err.value))
    assert len(script.seen) == 3 and other.seen == []  # one attempt each; the key never reached the other host
    redirect, refused, missing = messages
    assert f"redirect to {elsewhere}/chat/completions not followed" in redirect
    assert "refused the key (HTTP 401)" in refused and "synth.generator.api_key_env" in refused
    assert "HTTP 404: The model `persona-writer` does not exist (***)" in missing
    assert all(KEY not in m and url in m for m in messages)


def test_request_budget_is_never_exceeded_under_concurrency():
    with scripted_endpoint(delay=0.3) as (url, script):
        budget, replies, threads = Budget(7, None), [], set()

        def on_reply(reply):
            threads.add(threading.get_ident())
            replies.append(reply)

        gen = generator(url, budget, max_concurrent=4)
        with pytest.raises(BudgetExhausted, match="13 of 20 requests unanswered"):
            gen.complete(requests(20), on_reply)
        gen.close()
    assert len(script.seen) == 7 and len(replies) == 7 and budget.spent_requests == 7
    assert script.peak == 4  # concurrent, and bounded
    assert threads == {threading.get_ident()}  # on_reply ran in the caller's thread only


def test_token_budget_reserves_before_sending():
    reqs = [Request(f"s{i}", [{"role": "user", "content": "x" * 40}], 52) for i in range(10)]
    assert reservation(reqs[0]) == 40 + 8 + 52  # content bytes + 8 per message + max_tokens
    with scripted_endpoint(delay=0.05) as (url, script):
        budget, spent_seen = Budget(None, 200), []
        gen = generator(url, budget, max_concurrent=4)
        with pytest.raises(BudgetExhausted):
            gen.complete(reqs, lambda reply: spent_seen.append(budget.spent_tokens))
        gen.close()
    # two reservations fill 200; after that each answer settles to 15 and frees room for one more,
    # until 7 answers (105) + one reservation (100) would pass 200: the 8th is never sent
    assert len(script.seen) == 7 and len(spent_seen) == 7
    assert budget.spent_tokens == 7 * sum(USAGE) and max(spent_seen) <= 200
    with scripted_endpoint() as (url, script):
        with pytest.raises(BudgetExhausted, match="1 of 1 requests unanswered"):
            run(generator(url, Budget(None, 99)), reqs[:1])  # its reservation alone is 100
    assert script.seen == []


def test_key_only_when_given_and_the_request_body():
    with scripted_endpoint() as (url, script):
        run(generator(url, api_key=None, seed=None), requests(1))
        gen = generator(url)
        assert gen.name == f"endpoint:persona-writer@{url.split('//')[1].split('/')[0]}"
        run(gen, requests(1))
    (path, no_auth, plain), (_, auth, seeded) = script.seen
    assert (path, no_auth, auth) == ("/v1/chat/completions", None, f"Bearer {KEY}")
    assert plain == {"model": "persona-writer", "messages": [{"role": "user", "content": "hello 0"}],
                     "max_tokens": 16, "temperature": 0.9, "top_p": 0.95}
    assert seeded == {**plain, "seed": 3}


@pytest.fixture
def one_thread():
    """The tiny model gains nothing from threads, and on a busy 2-core machine two OpenMP threads
    spin against the other load: 6 s per complete() instead of 0.2 s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_local_generator_batches_seeds_and_counts(tiny_model, one_thread):
    from recipe_runner.synthesize.local import LocalGenerator

    def local(seed: int, budget: Budget) -> LocalGenerator:
        return LocalGenerator(str(tiny_model), temperature=0.7, top_p=0.9, seed=seed, budget=budget, batch_size=2,
                              device="cpu")

    reqs = [Request(f"s{i}", [{"role": "user", "content": "tell me about pods " * (5 - i)}], 6) for i in range(5)]
    budget = Budget(None, None)
    gen = local(1, budget)
    first, again = [], []
    gen.complete(reqs, first.append)
    gen.complete(reqs, again.append)
    assert sorted(r.key for r in first) == [r.key for r in reqs]
    for reply in first:
        assert 1 <= reply.completion_tokens <= 6
        assert reply.finish_reason == ("length" if reply.completion_tokens == 6 else "stop")
        request = next(r for r in reqs if r.key == reply.key)
        assert reply.prompt_tokens == len(gen.encode(request)) > 0
        assert (reply.text is None) == (reply.error == "empty content")
    assert {r.key: r.text for r in again} == {r.key: r.text for r in first}  # same seed, same replies
    assert budget.spent_tokens == 2 * sum(r.prompt_tokens + r.completion_tokens for r in first)

    cut = {}  # one batch generates 6 tokens; each reply is cut at its own max_tokens
    gen.complete([Request("long", reqs[0].messages, 6), Request("short", reqs[0].messages, 2)],
                 lambda reply: cut.setdefault(reply.key, reply))
    assert cut["long"].completion_tokens <= 6 and cut["short"].completion_tokens <= 2
    assert cut["short"].finish_reason == ("length" if cut["short"].completion_tokens == 2 else "stop")
    gen.close()

    other = []
    local(2, Budget(None, None)).complete(reqs, other.append)
    assert {r.key: r.text for r in other} != {r.key: r.text for r in first}

    for limit in (2, 3):  # a whole batch, then half of the second one
        got = []
        with pytest.raises(BudgetExhausted, match=f"{5 - limit} of 5 requests unanswered"):
            local(1, Budget(limit, None)).complete(reqs, got.append)
        assert len(got) == limit
