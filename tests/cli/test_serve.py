"""stage=serve: the real server in a subprocess, talked to with the official openai client.

One server start serves the whole module (loading costs seconds): the alex and echo tiny runs,
an API key, max_concurrent=1 and max_queue=0 (so a second generation at once is a 429), small
limits. The last test stops it with SIGTERM and reads its summary.json. A server-side crash in
generation is tested in-process on a fake model (a real one does not fail on demand).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from conftest import NO_USER_SETTINGS, REPO, free_port, run_cli, start_serve

KEY = "serve-test-key-7f3a"
LIMITS = {"max_tokens": 128, "max_context_tokens": 512, "max_body_bytes": 16384}
HELLO = [{"role": "user", "content": "What do you think about Kubernetes?"}]


@pytest.fixture(scope="module")
def server(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    port = free_port()
    adapters = "{" + ",".join(f"{name}:{run}" for name, run in tiny_runs.items()) + "}"
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "XDG_CONFIG_HOME": NO_USER_SETTINGS,
           "SERVE_TEST_KEY": KEY}
    env.pop("WANDB_MODE", None)
    args = ["stage=serve", f"serve.adapters={adapters}", f"serve.port={port}", "serve.api_key_env=SERVE_TEST_KEY",
            "serve.max_concurrent=1", "serve.max_queue=0", *(f"serve.{k}={v}" for k, v in LIMITS.items()),
            "sampling.temperature=0", "logger.wandb.enabled=false", f"paths.output_dir={out}"]
    log = out / "server.log"
    with open(log, "w") as fh:  # a file, not a pipe: a pipe nobody reads would block the server's logging
        proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while "serving " not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield SimpleNamespace(proc=proc, port=port, log=log, out=out, url=f"http://127.0.0.1:{port}/v1")
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def post(server, body: bytes | str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/chat/completions", content=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})})


def test_ready_line_and_models(server, client):
    assert f"serving alex, echo, base at http://127.0.0.1:{server.port}/v1" in server.log.read_text()
    models = client.models.list().data
    assert [m.id for m in models] == ["alex", "echo", "base"]
    assert {m.owned_by for m in models} == {"recipe-runner"}


def test_completion_streams_the_same_text(client):
    reply = client.chat.completions.create(model="alex", messages=HELLO, max_tokens=24)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == "alex"
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 20 and 1 <= usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(client.chat.completions.create(model="alex", messages=HELLO, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [choice.finish_reason]
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens


def test_personas_answer_differently(client):
    answers = {m: client.chat.completions.create(model=m, messages=HELLO, max_tokens=12).choices[0].message.content
               for m in ("alex", "echo", "base")}
    assert len(set(answers.values())) == 3, answers


def test_system_prompt_is_the_persona_s_unless_the_client_sends_one(client):
    def prompt_tokens(model, messages):
        return client.chat.completions.create(model=model, messages=messages, max_tokens=1).usage.prompt_tokens

    own = [{"role": "system", "content": "Be brief."}, *HELLO]
    assert prompt_tokens("alex", HELLO) > prompt_tokens("alex", own) + 30  # the card's prompt is ~70 tokens
    assert prompt_tokens("alex", own) == prompt_tokens("echo", own)


def test_request_errors(server, client):
    with pytest.raises(openai.NotFoundError, match="alex, echo, base"):
        client.chat.completions.create(model="bob", messages=HELLO)
    with pytest.raises(openai.BadRequestError, match="serve.max_tokens=128"):
        client.chat.completions.create(model="alex", messages=HELLO, max_tokens=1000)
    long = [{"role": "user", "content": "pods " * 600}]
    with pytest.raises(openai.BadRequestError, match=r"the prompt has \d+ tokens .* serve.max_context_tokens=512"):
        client.chat.completions.create(model="alex", messages=long, max_tokens=8)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="alex", messages=[])

    bad = post(server, '{"model": "alex", "messages": [')
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    typed = post(server, json.dumps({"model": "alex", "messages": HELLO, "max_tokens": "lots"}))
    assert typed.status_code == 400 and typed.json()["error"]["param"] == "max_tokens"
    big = json.dumps({"model": "alex", "messages": [{"role": "user", "content": "x" * 20000}]})
    sized = post(server, big)
    assert sized.status_code == 413 and "serve.max_body_bytes=16384" in sized.json()["error"]["message"]
    chunked = post(server, (big[i:i + 4096].encode() for i in range(0, len(big), 4096)))  # no Content-Length
    assert chunked.status_code == 413


def test_api_key(server):
    wrong = openai.OpenAI(base_url=server.url, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="alex", messages=HELLO, max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    bare = httpx.get(f"{server.url}/models")
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"


def test_busy_server_says_429_and_keeps_serving(server, client):
    """max_concurrent=1, max_queue=0: while one stream generates, another request is refused at once."""
    long = [{"role": "user", "content": "Tell me everything about pods, nodes and DNS. " * 10}]
    first = client.chat.completions.create(model="echo", messages=long, max_tokens=128, stream=True)
    try:  # the response has started: its slot is taken
        assert [m.id for m in client.models.list().data][-1] == "base"  # the event loop is free meanwhile
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="alex", messages=HELLO, max_tokens=4)
        assert refused.value.response.headers["retry-after"] == "1"
    finally:
        assert "".join(c.choices[0].delta.content or "" for c in first if c.choices)
    after = client.chat.completions.create(model="alex", messages=HELLO, max_tokens=4)  # the slot is back
    assert after.choices[0].message.content


def test_a_client_that_leaves_mid_stream_frees_its_slot_at_once(server, client):
    """max_concurrent=1: a stream dropped after its first words stops generating, and the next request is
    served long before that reply would have ended (the same reply, whole, is timed first)."""
    long = [{"role": "user", "content": "Tell me everything about pods, nodes and DNS. " * 10}]
    start = time.perf_counter()
    whole = client.chat.completions.create(model="echo", messages=long, max_tokens=LIMITS["max_tokens"])
    whole_s = time.perf_counter() - start
    assert whole.usage.completion_tokens == LIMITS["max_tokens"]  # greedy: the dropped one would run as long
    stream = client.chat.completions.create(model="echo", messages=long, max_tokens=LIMITS["max_tokens"],
                                            stream=True)
    next(c for c in stream if c.choices and c.choices[0].delta.content)
    stream.close()  # the client leaves after its first words
    left, refused = time.perf_counter(), 0
    while True:
        try:
            client.chat.completions.create(model="alex", messages=HELLO, max_tokens=1)
            break
        except openai.RateLimitError:
            refused += 1
            time.sleep(0.01)
    freed_s = time.perf_counter() - left
    assert freed_s < whole_s / 2, (freed_s, whole_s, refused)  # run out, it held the slot ~whole_s


def test_a_template_that_refuses_the_message_order_is_a_400(tiny_runs, tmp_path):
    """A persona whose chat template raises on an order (Llama's and Mistral's: roles must alternate)."""
    strict = tmp_path / "strict"
    shutil.copytree(tiny_runs["alex"] / "adapters" / "best", strict)
    card = json.loads((strict / "persona.json").read_text())
    refuse = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
              "{% endif %}{% endfor %}")
    assert card["chat_template"]
    card["chat_template"] = refuse + card["chat_template"]
    (strict / "persona.json").write_text(json.dumps(card))
    port = free_port()
    served = start_serve([f"serve.adapters={{strict: {strict}}}", f"serve.port={port}", "logger.wandb.enabled=false",
                          f"paths.output_dir={tmp_path}"], tmp_path, timeout=180)
    try:
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert api.chat.completions.create(model="strict", messages=HELLO, max_tokens=2).choices[0].message.content
        twice = [*HELLO, {"role": "user", "content": "And DNS?"}]
        with pytest.raises(openai.BadRequestError) as refused:
            api.chat.completions.create(model="strict", messages=twice, max_tokens=2)
        error = refused.value.body.get("error", refused.value.body)
        assert error["param"] == "messages" and "roles must alternate" in error["message"], error
        assert api.chat.completions.create(model="strict", messages=HELLO, max_tokens=2).choices  # still serving
    finally:
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=60) == 0
    assert "Traceback" not in served.log.read_text()


RETRIED = ("valid stream", "stream dropped")  # in the burst these retry on 429 until served


def burst_cases() -> list[tuple[str, str, str, object, set, str | None]]:
    """(kind, method, path, body, allowed statuses, error code): the 71 requests of the burst test, most
    of them wrong in one way each. A body that is a function is called per request (a chunked upload)."""
    def chat(**extra) -> str:
        return json.dumps({"model": "alex", "messages": HELLO, "max_tokens": 4, **extra})

    big = json.dumps({"model": "alex", "messages": [{"role": "user", "content": "x" * 20000}]})
    chunked = lambda: (big[i:i + 4096].encode() for i in range(0, len(big), 4096))  # noqa: E731
    chats = "POST", "/chat/completions"
    table = [  # (count, kind, method and path, body, allowed statuses, error code)
        *((1, "valid", chats, chat(model=("alex", "echo", "base")[i % 3], temperature=(0, 0.7, 1e-300)[i % 3]),
           {200, 429}, None) for i in range(18)),  # 1e-300 overflowed the logits once: a 500
        *((1, "valid stream", chats, chat(model=("alex", "echo", "base")[i], temperature=(0, 0.7, 1e-300)[i],
                                          stream=True, stream_options={"include_usage": True}), {200}, None)
          for i in range(3)),
        (2, "stream dropped", chats, chat(stream=True, max_tokens=16), {200}, None),  # the client leaves
        (4, "broken json", chats, '{"model": "alex", "messages": [', {400}, "invalid_json"),
        (2, "deep json", chats, "[" * 5000, {400}, "invalid_json"),
        (3, "not an object", chats, '[{"model": "alex"}]', {400}, "invalid_json"),
        (2, "NaN", chats, chat()[:-1] + ', "temperature": NaN}', {400}, "invalid_json"),
        (2, "lone surrogate", chats, chat(messages=[{"role": "user", "content": "\ud800"}]), {400}, "invalid_json"),
        (3, "wrong type", chats, chat(max_tokens="lots"), {400}, "invalid_value"),
        (2, "messages not a list", chats, chat(messages="hi"), {400}, "invalid_value"),
        (3, "unknown role", chats, chat(messages=[{"role": "tool", "content": "hi"}]), {400}, "invalid_value"),
        (2, "seed out of range", chats, chat(seed=2**70), {400}, "invalid_value"),
        (2, "tiny repetition_penalty", chats, chat(temperature=1, repetition_penalty=1e-300), {400}, "invalid_value"),
        (3, "body too large", chats, big, {413}, "request_too_large"),
        (3, "body too large, chunked", chats, chunked, {413}, "request_too_large"),
        (3, "prompt too long", chats, chat(messages=[{"role": "user", "content": "pods " * 600}], max_tokens=8),
         {400}, "context_length_exceeded"),
        (3, "max_tokens over the cap", chats, chat(max_tokens=1000), {400}, "invalid_value"),
        (3, "unsupported parameter", chats, chat(stop=["\n"]), {400}, "unsupported_parameter"),
        (2, "unknown model", chats, chat(model="bob"), {404}, "model_not_found"),
        (2, "no key", chats, chat(), {401}, "invalid_api_key"),
        (2, "wrong path", ("POST", "/completions"), chat(), {404}, None),
        (2, "wrong method", ("GET", "/chat/completions"), None, {405}, None),
    ]
    return [(kind, method, path, body, allowed, code)
            for count, kind, (method, path), body, allowed, code in table for _ in range(count)]


def test_a_burst_of_good_and_bad_requests_gets_4xx_never_5xx(server, client):
    """16 threads send 71 requests at once to the module's server (max_concurrent=1, max_queue=0): each
    malformed, over-long or over-limit one gets its 4xx in OpenAI's error shape, each valid one a reply or
    a 429 with Retry-After (streams retry until served, two of them hang up after the first event), none a
    5xx or a dropped connection. The server's log counts the same statuses, and afterwards it serves as before."""
    import random
    import re
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    cases = burst_cases()
    random.Random(0).shuffle(cases)
    log_start = len(server.log.read_text())
    statuses = []  # of every response, retries included (list.append is atomic)

    def send(http: httpx.Client, case) -> tuple[int, dict | str, httpx.Headers]:
        kind, method, path, body, _, _ = case
        while True:
            headers = {} if kind == "no key" else {"Authorization": f"Bearer {KEY}"}
            response = http.send(http.build_request(method, server.url + path, headers=headers,
                                                    content=body() if callable(body) else body), stream=True)
            try:
                statuses.append(response.status_code)
                if kind == "stream dropped" and response.status_code == 200:  # the first event, then hang up
                    assert next(response.iter_lines()).startswith("data: {")
                    return 200, "dropped", response.headers
                response.read()
            finally:
                response.close()
            if kind not in RETRIED or response.status_code != 429:
                break
            time.sleep(0.25)  # not the full Retry-After: the test stays short
        try:
            return response.status_code, response.json(), response.headers
        except ValueError:
            return response.status_code, response.text, response.headers

    def attempt(http, case):
        try:
            return send(http, case)
        except Exception as exc:  # noqa: BLE001 - a dropped connection or a timeout: reported below
            return -1, f"{type(exc).__name__}: {exc}", httpx.Headers()

    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with httpx.Client(timeout=120, limits=limits, headers={"Content-Type": "application/json"}) as http:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda case: attempt(http, case), cases))

    problems, seen = [], Counter()
    for (kind, _, _, body, allowed, code), (status, answer, headers) in zip(cases, results):
        seen[kind, status] += 1
        if status not in allowed:
            problems.append(f"{kind}: {status} {str(answer)[:300]}")
        elif status >= 400:  # OpenAI's error shape, with our code
            error = answer.get("error") if isinstance(answer, dict) else None
            if not (isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
                    and error["message"] and error["code"] == (code if status != 429 else "rate_limit_exceeded")):
                problems.append(f"{kind}: {status} not in OpenAI's error shape or not {code}: {answer!r:.300}")
            if status == 429 and headers.get("retry-after") != "1":
                problems.append(f"{kind}: 429 without Retry-After: 1")
        elif kind == "valid":
            content = answer["choices"][0]["message"]["content"]
            if not (isinstance(content, str) and 1 <= answer["usage"]["completion_tokens"] <= 4):
                problems.append(f"{kind}: a bad reply {answer!r:.300}")
        elif kind == "valid stream":
            if not answer.endswith("data: [DONE]\n\n") or '"completion_tokens"' not in answer \
                    or 'data: {"error"' in answer:
                problems.append(f"{kind}: a bad stream {answer!r:.300}")
    assert not problems, "\n".join(problems)
    assert not [s for s in statuses if s >= 500] and not [s for _, s in seen if s < 0], seen
    assert seen["valid", 200] + sum(seen[kind, 200] for kind in RETRIED) >= 6, seen
    assert statuses.count(429) >= 1, seen  # 16 at once on one slot: the limit refused some

    # the server's own log: a line per response with the same status (a dropped stream's line comes when
    # its generation has run out)
    line = re.compile(r"^\d\d:\d\d:\d\d (?:GET|POST) /v1/\S+ (\d{3}) ", re.M)
    deadline = time.time() + 120  # against a hang only
    while len(logged := line.findall(server.log.read_text()[log_start:])) < len(statuses) and time.time() < deadline:
        time.sleep(0.2)
    assert Counter(int(s) for s in logged) == Counter(statuses)
    assert "Traceback" not in server.log.read_text()[log_start:]

    # still serving: health, models, and a normal reply once the dropped streams give their slot back
    assert server.proc.poll() is None
    assert httpx.get(f"{server.url[:-3]}/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == ["alex", "echo", "base"]
    while True:
        try:
            after = client.chat.completions.create(model="alex", messages=HELLO, max_tokens=4)
            break
        except openai.RateLimitError:
            assert time.time() < deadline, "the slot never came back"
            time.sleep(0.2)
    assert after.choices[0].message.content and after.usage.completion_tokens <= 4


def test_port_in_use_is_a_one_line_error(tiny_runs, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_cli("stage=serve", f"adapter={tiny_runs['alex']}", f"serve.port={port}",
                      "logger.wandb.enabled=false", f"paths.output_dir={tmp_path}", timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], res.stderr[-2000:]


def test_sigterm_stops_cleanly_with_a_summary(server):
    """Last: the module's server stops as a user stops it, and says what it did."""
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0, server.log.read_text()[-3000:]
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "POST /v1/chat/completions 429" in log and "POST /v1/chat/completions 200" in log
    summary = json.loads(next(Path(server.out).glob("use/serve/*/summary.json")).read_text())
    assert summary["models"] == ["alex", "echo", "base"] and summary["url"] == server.url
    assert summary["requests"] > 10 and summary["errors"] >= 8


# --- in-process, on a fake model: a failing generation ------------------------------------------


class FakePersonas:
    names = ["ok", "boom", "base"]

    def system_prompt(self, name):
        return None

    def encode(self, name, messages):
        import torch

        return torch.zeros(1, 5, dtype=torch.long)

    def stream(self, name, messages, sampling, ids=None):
        from recipe_runner.use.replies import Reply

        yield " hello"
        if name == "boom":
            raise RuntimeError("the model fell over")
        yield " world "
        yield Reply("hello world", 5, 2, "stop")

    def reply(self, name, messages, sampling, ids=None):
        *_, last = self.stream(name, messages, sampling, ids)
        return last


def test_a_failing_generation_is_a_500_and_the_server_carries_on():
    from fastapi.testclient import TestClient

    from recipe_runner.use.replies import Sampling
    from recipe_runner.use.serve import create_app

    limits = SimpleNamespace(api_key_env=None, max_body_bytes=4096, max_tokens=64, max_context_tokens=256,
                             max_concurrent=1, max_queue=0)
    with TestClient(create_app(FakePersonas(), limits, Sampling())) as http:
        def ask(model, **extra):
            return http.post("/v1/chat/completions", json={"model": model, "messages": HELLO, **extra})

        failed = ask("boom")
        assert failed.status_code == 500 and "the model fell over" in failed.json()["error"]["message"]
        streamed = ask("boom", stream=True)
        assert streamed.status_code == 200 and '"type": "server_error"' in streamed.text
        ok = ask("ok")
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "hello world"
        deltas = [json.loads(line[6:]) for line in ask("ok", stream=True).text.splitlines()
                  if line.startswith("data: {")]
        assert "".join(d["choices"][0]["delta"].get("content", "") for d in deltas) == "hello world"
