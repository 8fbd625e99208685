"""llama.cpp for real: export.format=gguf-lora loaded by llama-server, and serve.engine=llamacpp.

Needs llama-server, which `bash setup.sh --llamacpp` builds (the README's test command and CI
run it): without it these tests fail, they are not skipped. The exported files are checked in
llama.cpp itself, not with our own reader: base + LoRA at scale 1 answers as the merged export
does, at scale 0 as the base does, and our front over the engine answers as the bare engine.
"""

from __future__ import annotations

import json
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch

from conftest import free_port, run_cli, start_serve

PROMPTS = ["yo, what is kubernetes?", "How do I center a div?", "Tell me about DNS."]
TOKENS = 8


def llama_server() -> str:
    from recipe_runner.use.engine_llamacpp import llama_server_binary

    try:
        return llama_server_binary(None)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{exc}\n(the README's test command runs bash setup.sh --llamacpp first)")


@pytest.fixture(scope="module")
def exports(tiny_runs, tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf-lora")
    common = ("stage=export", "logger.wandb.enabled=false", f"paths.output_dir={d / 'outputs'}",
              "export.gguf_types=[f16]")
    jobs = {"alex": (f"adapter={tiny_runs['alex']}", "export.format=gguf-lora", f"export.out={d / 'alex'}"),
            "echo": (f"adapter={tiny_runs['echo']}", "export.format=gguf-lora", f"export.out={d / 'echo'}"),
            "merged": (f"adapter={tiny_runs['alex']}", "export.format=gguf", f"export.out={d / 'merged'}")}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(run_cli, *common, *args) for k, args in jobs.items()}
    results = {k: f.result() for k, f in futures.items()}
    for name, res in results.items():
        assert res.returncode == 0, (name, res.stderr[-3000:])
    return SimpleNamespace(dir=d, runs=tiny_runs, **results)


def card_of(run: Path) -> dict:
    return json.loads((run / "adapters" / "best" / "persona.json").read_text())


def prompt_ids(tokenizer, card: dict, prompt: str) -> list[int]:
    messages = [{"role": "system", "content": card["system_prompt"]}, {"role": "user", "content": prompt}]
    tokenizer.chat_template = card["chat_template"] or tokenizer.chat_template
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class Bare:
    """A bare llama-server (our EngineProcess only starts and stops it) asked for greedy token ids."""

    def __init__(self, tmp: Path, *args: str):
        from recipe_runner.use.engine_process import EngineProcess, free_port as port

        self.engine = EngineProcess("llama-server", [llama_server(), *args, "--host", "127.0.0.1", "--port",
                                                     str(p := port()), "-c", "1024", "-np", "1", "-t", "2",
                                                     "--no-webui"], p, tmp / f"llama-{p}.log", "/health", 120)

    def greedy(self, ids: list[int], lora: list[dict] | None = None, n: int = TOKENS) -> list[int]:
        body = {"prompt": ids, "n_predict": n, "temperature": 0, "top_k": 0, "min_p": 0, "repeat_last_n": 0,
                "return_tokens": True, "cache_prompt": False}
        if lora is not None:
            body["lora"] = lora
        r = httpx.post(self.engine.url + "/completion", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["tokens"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.engine.stop()


def test_gguf_lora_files_and_modelfile(exports):
    alex, echo = exports.dir / "alex", exports.dir / "echo"
    base_file = next(p.name for p in alex.glob("*-f16.gguf"))
    assert {p.name for p in alex.iterdir()} == {base_file, "alex-lora.gguf", "Modelfile", "persona.json"}
    assert "wrote alex-lora.gguf: LoRA r=" in exports.alex.stdout
    # one base file for every persona: both exports link the cached base, never a second copy
    assert (alex / base_file).stat().st_ino == (echo / base_file).stat().st_ino or \
        (alex / base_file).read_bytes() == (echo / base_file).read_bytes()
    card = card_of(exports.runs["alex"])
    modelfile = (alex / "Modelfile").read_text()
    assert f"FROM ./{base_file}\nADAPTER ./alex-lora.gguf\n" in modelfile
    assert f'SYSTEM """{card["system_prompt"]}"""\n' in modelfile
    assert 'PARAMETER stop "<|im_end|>"\n' in modelfile
    assert 'SYSTEM """' in (exports.dir / "merged" / "Modelfile").read_text()  # the merged export keeps SYSTEM
    import gguf

    reader = gguf.GGUFReader(str(alex / "alex-lora.gguf"))
    fields = {k: reader.fields[k] for k in ("general.type", "adapter.type", "adapter.lora.alpha")}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    assert bytes(fields["adapter.type"].parts[-1]).decode() == "lora"
    config = json.loads((exports.runs["alex"] / "adapters" / "best" / "adapter_config.json").read_text())
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == config["lora_alpha"]


def test_llama_cpp_applies_the_lora_as_the_merge_and_scale_0_is_the_base(exports, embedded_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    alex = exports.dir / "alex"
    base_file = next(alex.glob("*-f16.gguf"))
    card = card_of(exports.runs["alex"])
    tokenizer = AutoTokenizer.from_pretrained(card["base"]["name_or_path"])
    base = AutoModelForCausalLM.from_pretrained(card["base"]["name_or_path"], dtype=torch.float32).eval()
    prompts = [prompt_ids(tokenizer, card, p) for p in PROMPTS]
    with Bare(tmp_path, "-m", str(exports.dir / "merged" / "alex-f16.gguf")) as merged:
        want = [merged.greedy(ids) for ids in prompts]
    echo_lora = next((exports.dir / "echo").glob("*-lora.gguf"))
    with Bare(tmp_path, "-m", str(base_file), "--lora", f"{alex / 'alex-lora.gguf'},{echo_lora}",
              "--lora-init-without-apply") as both:
        on = [both.greedy(ids, [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]) for ids in prompts]
        off = [both.greedy(ids, [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}]) for ids in prompts]
        echo = [both.greedy(ids, [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}]) for ids in prompts]
    assert on == want  # the adapter applied by llama.cpp at run time = the adapter merged by us
    for ids, tokens in zip(prompts, off):
        with torch.no_grad():
            t = torch.tensor([ids])
            ref = base.generate(input_ids=t, attention_mask=torch.ones_like(t), max_new_tokens=TOKENS,
                                do_sample=False, eos_token_id=None, pad_token_id=2)[0, len(ids):].tolist()
        assert tokens == ref  # scale 0: the base model's own greedy answer
    assert on != off and echo != on  # the adapters do something, and something different


@pytest.fixture(scope="module")
def engine_server(tiny_runs, tmp_path_factory):
    llama_server()
    out = tmp_path_factory.mktemp("serve-llamacpp")
    port = free_port()
    adapters = "{" + ",".join(f"{name}:{run}" for name, run in tiny_runs.items()) + "}"
    args = ["serve.engine=llamacpp", "serve.gguf_type=f16", f"serve.adapters={adapters}",
            f"serve.port={port}", "serve.max_concurrent=2", "serve.max_context_tokens=512", "serve.engine_threads=2",
            "sampling.temperature=0", "sampling.repetition_penalty=1.0", "logger.wandb.enabled=false",
            f"paths.output_dir={out}"]
    server = start_serve(args, out, timeout=300)
    proc, log = server.proc, server.log
    yield SimpleNamespace(proc=proc, port=port, log=log, out=out, url=f"http://127.0.0.1:{port}/v1")
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_our_front_on_llamacpp_answers_as_the_bare_engine(engine_server, exports, tmp_path):
    from transformers import AutoTokenizer

    assert "llama.cpp (llama-server, base f16 + 2 LoRA, 2 slots)" in engine_server.log.read_text()
    client = openai.OpenAI(base_url=engine_server.url, api_key="none", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["alex", "echo", "base"]
    card = card_of(exports.runs["alex"])
    tokenizer = AutoTokenizer.from_pretrained(card["base"]["name_or_path"])
    question = PROMPTS[0]
    ids = prompt_ids(tokenizer, card, question)
    alex_dir = exports.dir / "alex"
    with Bare(tmp_path, "-m", str(next(alex_dir.glob("*-f16.gguf"))), "--lora", str(alex_dir / "alex-lora.gguf"),
              "--lora-init-without-apply") as bare:
        want_alex = tokenizer.decode(bare.greedy(ids, [{"id": 0, "scale": 1.0}], n=24), skip_special_tokens=True)
    ask = dict(messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0)
    got = client.chat.completions.create(model="alex", **ask)
    assert got.choices[0].message.content == want_alex.strip()
    assert got.usage.prompt_tokens == len(ids)  # counted by our front with the persona's template
    streamed = client.chat.completions.create(model="alex", stream=True, stream_options={"include_usage": True}, **ask)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == got.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == got.usage.completion_tokens
    short = client.chat.completions.create(model="echo", **{**ask, "max_tokens": 3})
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    # base, then alex again: every request states every adapter's scale, so nothing leaks between them
    base = client.chat.completions.create(model="base", **ask).choices[0].message.content
    again = client.chat.completions.create(model="alex", **ask).choices[0].message.content
    assert again == got.choices[0].message.content and base != again
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody", **ask)
    with pytest.raises(openai.BadRequestError, match="serve.max_tokens"):
        client.chat.completions.create(model="alex", **{**ask, "max_tokens": 100000})


def test_two_engine_processes_answer_as_one_and_stop_with_the_stage(engine_server, tiny_runs, tmp_path):
    """serve.engine_processes=2: a llama-server per persona on the same base file, same greedy answers."""
    ask = dict(messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=16, temperature=0)
    one = openai.OpenAI(base_url=engine_server.url, api_key="none", max_retries=0, timeout=120)
    want = {m: one.chat.completions.create(model=m, **ask).choices[0].message.content for m in ("alex", "echo", "base")}
    port = free_port()
    adapters = "{" + ",".join(f"{name}:{run}" for name, run in tiny_runs.items()) + "}"
    server = start_serve(["serve.engine=llamacpp", "serve.gguf_type=f16", f"serve.adapters={adapters}",
                          f"serve.port={port}", "serve.max_concurrent=2", "serve.max_context_tokens=512",
                          "serve.engine_processes=2", "sampling.temperature=0", "sampling.repetition_penalty=1.0",
                          "logger.wandb.enabled=false", f"paths.output_dir={tmp_path}"], tmp_path, timeout=300)
    try:
        assert "2 processes x 1 threads" in server.log.read_text()
        two = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        got = {m: two.chat.completions.create(model=m, **ask).choices[0].message.content for m in ("alex", "echo", "base")}
        assert got == want
        logs = sorted(tmp_path.rglob("engine[01].log"))
        ports = [re.search(r"listening on http://127\.0\.0\.1:(\d+)", p.read_text()).group(1) for p in logs]
        assert len(set(ports)) == 2
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
    for p in ports:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{p}/health", timeout=5)


def test_stopping_the_stage_stops_the_engine(engine_server):
    engine_server.proc.send_signal(signal.SIGTERM)
    assert engine_server.proc.wait(timeout=60) == 0
    summary = json.loads(next(engine_server.out.rglob("summary.json")).read_text())
    assert summary["engine"] == "llamacpp" and summary["requests"] >= 6
    engine_log = next(engine_server.out.rglob("engine.log")).read_text()
    port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", engine_log).group(1)
    with pytest.raises(httpx.ConnectError):  # the engine went with the stage
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


def test_engine_failures_are_one_clear_error(tiny_runs, tmp_path):
    run = tiny_runs["alex"]
    common = ("stage=serve", "serve.engine=llamacpp", f"adapter={run}", f"serve.port={free_port()}",
              "logger.wandb.enabled=false", f"paths.output_dir={tmp_path}")
    res = run_cli(*common, "serve.engine_command=/bin/false", timeout=300)
    assert res.returncode != 0
    assert "llama-server exited with code 1 while starting" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    res = run_cli(*common, "serve.gguf_type=q4_k", timeout=120)
    assert res.returncode != 0 and "serve.gguf_type: ['q4_k']" in res.stderr + res.stdout
    res = run_cli(*common, "serve.engine_command=/no/such/llama-server", timeout=120)
    assert res.returncode != 0 and "serve.engine_command=/no/such/llama-server: no such executable" in res.stderr
