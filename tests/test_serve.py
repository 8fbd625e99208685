"""stage=serve: the real server in a subprocess, talked to with the official openai client.

One server start serves the whole module (loading costs seconds): the alex and echo tiny runs,
an API key, max_concurrent=1 and max_queue=0 (so a second generation at once is a 429), small
limits. The last test stops it with SIGTERM and reads its summary.json. A server-side crash in
generation is tested in-process on a fake model (a real one does not fail on demand).
"""

from __future__ import annotations

import json
import os
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

from conftest import NO_USER_SETTINGS, REPO, run_cli

KEY = "serve-test-key-7f3a"
LIMITS = {"max_tokens": 128, "max_context_tokens": 512, "max_body_bytes": 16384}
HELLO = [{"role": "user", "content": "What do you think about Kubernetes?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        from recipe_runner.use.personas import Reply

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

    from recipe_runner.use.personas import Sampling
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
