"""A bounded load test of `stage=serve`: N mixed requests, good and bad, at concurrency C.

    python bench/serve_load.py --adapter <adapter folder | run folder> [--requests 200] [--concurrency 16]
        [--max-tokens 8] [--max-concurrent 1] [--max-queue 8] [--threads 1] [--json out.json]
    python bench/serve_load.py --tiny [...]   # no run at hand: the tests' tiny random Llama, one 1-epoch run

1. Server. `python run.py stage=serve adapter=<folder>` on a free port, as a user starts it, with
   serve.max_concurrent / serve.max_queue from the flags and the other limits at their defaults
   (max_body_bytes 65536, max_tokens 512, max_context_tokens 2048), temperature 0, and
   OMP_NUM_THREADS=--threads. Polled until /v1/models answers. --tiny first builds the tests' tiny
   random Llama (tests/tiny.py, SmolLM2's tokenizer) and trains one epoch of the default recipe on
   it, on a small corpus written here (about a minute on 2 cores); its replies are noise, its
   speed is not SmolLM2's, but every code path is the real one.
2. Load. --requests requests, in a fixed mix (KINDS, round robin, shuffled with seed 0), from
   --concurrency threads sharing one httpx client (keep-alive connections): half of them valid chat
   completions (a quarter of those streamed), the other half malformed or beyond a limit, one kind
   each. Nobody retries: a 429 is counted as it came.
3. Table: per kind, the count of each status and whether it was the expected one (see KINDS), and
   p50 / p95 latency of the valid requests that were answered (200) and of the refused ones (429).
   Then the server's own figures from summary.json (written when it stops on SIGINT): its request
   and error counts must equal what the clients saw. Any 5xx or dropped connection is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bench_serve import free_port, process_cpu, stop  # noqa: E402  (bench/ is the script folder)
from machine import busy_cpu_seconds, cpu_seconds  # noqa: E402

MAX_BODY, MAX_CONTEXT, MAX_TOKENS = 65536, 2048, 512  # serve.* defaults (config/schema.py ServeConfig)
HELLO = [{"role": "user", "content": "What do you think about Kubernetes?"}]
VALID = ("valid", "valid stream")


def kinds(model: str, max_tokens: int) -> list[tuple[str, int, str, str, object, set]]:
    """(kind, weight, method, path, body, expected statuses). A callable body is a chunked upload."""
    def chat(**extra) -> str:
        return json.dumps({"model": model, "messages": HELLO, "max_tokens": max_tokens, "temperature": 0, **extra})

    big = json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * 2 * MAX_BODY}]})
    long = [{"role": "user", "content": "pods " * (MAX_CONTEXT + 100)}]  # ~1 token a word: over the context
    c = "POST", "/v1/chat/completions"
    return [
        ("valid", 9, *c, chat(), {200, 429}),
        ("valid stream", 3, *c, chat(stream=True), {200, 429}),
        ("broken json", 1, *c, '{"model": "x", "messages": [', {400}),
        ("deep json", 1, *c, "[" * 5000, {400}),
        ("not an object", 1, *c, "[1, 2, 3]", {400}),
        ("wrong type", 1, *c, chat(max_tokens="lots"), {400}),
        ("unknown role", 1, *c, chat(messages=[{"role": "tool", "content": "hi"}]), {400}),
        ("body too large", 1, *c, big, {413}),
        ("body too large, chunked", 1, *c, lambda: (big[i:i + 8192].encode() for i in range(0, len(big), 8192)),
         {413}),
        ("prompt too long", 1, *c, chat(messages=long, max_tokens=8), {400}),
        ("max_tokens over the cap", 1, *c, chat(max_tokens=MAX_TOKENS + 1), {400}),
        ("unsupported parameter", 1, *c, chat(tools=[{"type": "function"}]), {400}),
        ("wrong path", 1, "POST", "/v1/completions", chat(), {404}),
        ("wrong method", 1, "GET", "/v1/chat/completions", None, {405}),
    ]


def tiny_run(work: Path, env: dict) -> Path:
    """The tests' tiny random Llama and one epoch of the default recipe on it (tests/conftest.py's way)."""
    sys.path.insert(0, str(REPO / "tests"))
    from tiny import build_tiny_model

    from recipe_runner.model.embedded import resolve_model_path

    cache = os.environ.get("RECIPE_RUNNER_CACHE", os.path.expanduser("~/.cache/recipe-runner"))
    model = build_tiny_model(work / "tiny-llama", resolve_model_path("embedded:SmolLM2-135M-Instruct", cache))
    rows = {"niche": [[f"question {i} about pods", f"yo, answer {i}: it's always DNS."] for i in range(20)],
            "general": [[f"What is {a} plus {a + 7}?", f"{a} plus {a + 7} is {2 * a + 7}."] for a in range(700)]}
    for name, pairs in rows.items():
        (work / f"{name}.jsonl").write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n" for q, a in pairs))
    run_dir = work / "runs" / "tiny"
    cmd = [sys.executable, "run.py", f"model.name_or_path={model}", "model.quant=none", "train.max_epochs=1",
           f"data.sources.alex.path={work / 'niche.jsonl'}", "data.sources.alex.max_examples=null",
           f"data.sources.general.path={work / 'general.jsonl'}", "data.mix.general_ratio=2", "data.max_length=256",
           "train.batch_size=2", "train.grad_accum=1", "eval.checks=false", "logger.wandb.enabled=false",
           f"paths.output_dir={work}", f"hydra.run.dir={run_dir}"]
    print("[bench] --tiny: training one epoch on the tiny random Llama ...", flush=True)
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"the tiny run failed:\n{res.stderr[-3000:]}")
    return run_dir


def start(cmd: list[str], url: str, log: Path, env: dict, timeout: float = 600) -> tuple[subprocess.Popen, int]:
    """The server, once /v1/models answers; and how many polls reached it (they are in its request count)."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline, polls = time.time() + timeout, 0
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, polls + 1
        except httpx.ConnectError:  # not listening yet
            pass
        except httpx.HTTPError:  # listening but not serving yet: the request may still be served later
            polls += 1
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def fire(url: str, cases: list, concurrency: int) -> list[tuple[str, int, float, str]]:
    """Every case once, from `concurrency` threads: (kind, status or -1, seconds, error text)."""
    def one(http: httpx.Client, case) -> tuple[str, int, float, str]:
        kind, method, path, body, _ = case
        began = time.monotonic()
        try:
            r = http.request(method, url + path, content=body() if callable(body) else body)
            error = r.text[:200] if r.status_code >= 500 else ""
            return kind, r.status_code, time.monotonic() - began, error
        except Exception as exc:  # noqa: BLE001 - a dropped connection or a timeout: counted and shown
            return kind, -1, time.monotonic() - began, f"{type(exc).__name__}: {exc}"[:200]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=600, limits=limits, headers={"Content-Type": "application/json"}) as http:
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda case: one(http, case), cases))


def pct(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--adapter", help="adapter folder (with persona.json) or run folder")
    where.add_argument("--tiny", action="store_true", help="train a tiny random Llama for one epoch and serve that")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=8, help="of each valid request")
    p.add_argument("--max-concurrent", type=int, default=1, help="serve.max_concurrent")
    p.add_argument("--max-queue", type=int, default=8, help="serve.max_queue")
    p.add_argument("--threads", default="1", help="OMP_NUM_THREADS of the server ('' = torch's default)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()

    from recipe_runner.train.adapter_card import read_card, resolve_adapter
    from recipe_runner.use.serve import model_name

    work = Path(tempfile.mkdtemp(prefix="bench-serve-load-"))
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
           "XDG_CONFIG_HOME": str(work / "xdg")}  # the user's own settings stay out
    env.pop("OMP_NUM_THREADS", None)
    adapter = resolve_adapter(str(tiny_run(work, env)) if a.tiny else a.adapter, "outputs")
    name = model_name(read_card(adapter))
    if a.threads:
        env["OMP_NUM_THREADS"] = a.threads
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "run.py", "stage=serve", f"adapter={adapter}", f"serve.port={port}",
           f"serve.max_concurrent={a.max_concurrent}", f"serve.max_queue={a.max_queue}", "sampling.temperature=0",
           "logger.wandb.enabled=false", f"paths.output_dir={work}"]
    table = kinds(name, a.max_tokens)
    cases = [case for case in table for _ in range(case[1])]
    cases = [cases[i % len(cases)] for i in range(a.requests)]
    random.Random(0).shuffle(cases)
    cases = [(kind, method, path, body, expected) for kind, _, method, path, body, expected in cases]

    print(f"[bench] serving {adapter} as {name!r} ...", flush=True)
    proc, polls = start(cmd, url, work / "server.log", env)
    try:
        with httpx.Client() as http:  # warm-up: the first generation pays one-off costs
            http.post(f"{url}/v1/chat/completions", timeout=600, content=table[0][4])
        busy0, mine0, server0, began = busy_cpu_seconds(), cpu_seconds(), process_cpu(proc.pid), time.monotonic()
        results = fire(url, cases, a.concurrency)
        wall = time.monotonic() - began
        server = (process_cpu(proc.pid) - server0) / wall
        others = max((busy_cpu_seconds() - busy0 - (cpu_seconds() - mine0)) / wall - server, 0.0)
        with httpx.Client() as http:
            after = http.post(f"{url}/v1/chat/completions", timeout=600, content=table[0][4]).status_code
    finally:
        stop(proc)
    summaries = list(work.glob("use/serve/*/summary.json"))
    summary = json.loads(summaries[0].read_text()) if summaries else {}
    shutil.rmtree(work, ignore_errors=True)

    statuses, latency = defaultdict(Counter), defaultdict(list)
    for kind, status, seconds, _ in results:
        statuses[kind][status] += 1
        if kind in VALID:
            latency[status].append(seconds)
    print(f"\n{a.requests} requests at concurrency {a.concurrency} in {wall:.1f} s; model {name} "
          f"({adapter}); serve.max_concurrent={a.max_concurrent}, serve.max_queue={a.max_queue}, "
          f"max_tokens {a.max_tokens}, temperature 0; OMP_NUM_THREADS={a.threads or 'unset'}; "
          f"{os.cpu_count()} CPUs: the server used {server:.2f} cores, other processes {others:.2f}")
    print(f"{'kind':<26}{'sent':>6}  statuses{'':<22}expected")
    for kind, _, _, _, _, exp in table:
        got = statuses[kind]
        shown = ", ".join(f"{s if s > 0 else 'no answer'}: {n}" for s, n in sorted(got.items()))
        print(f"{kind:<26}{sum(got.values()):>6}  {shown:<30}{'yes' if set(got) <= exp else 'NO'}")
    for status, label in ((200, "answered (200)"), (429, "refused (429)")):
        lat = latency.get(status, [])
        if lat:
            print(f"valid, {label:<16} {len(lat):>4}   latency p50 {statistics.median(lat):.2f} s, "
                  f"p95 {pct(lat, 0.95):.2f} s")
    bad = [r for r in results if r[1] >= 500 or r[1] < 0]
    for kind, status, _, error in bad[:5]:
        print(f"    {kind}: {status} {error}")
    seen_errors = sum(1 for r in results if r[1] >= 400 or r[1] < 0)
    if summary:  # the readiness polls, the warm-up and the request after the load are the server's too
        adds_up = summary["requests"] == len(results) + polls + 2 and summary["errors"] == seen_errors
        print(f"server summary.json: {summary['requests']} requests (clients: {len(results)} in the load, "
              f"{polls} readiness poll(s), 2 around it), {summary['errors']} errors (clients saw {seen_errors} "
              f"4xx/5xx): {'adds up' if adds_up else 'DOES NOT ADD UP'}")
    print(f"5xx or no answer: {len(bad)}; a valid request after the load: {after}")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "args": vars(a), "wall_s": wall, "server_cpu_cores": server, "other_cpu_cores": others, "after": after,
            "summary": summary,
            "statuses": {k: dict(v) for k, v in statuses.items()},
            "latency_s": {str(s): {"n": len(v), "p50": statistics.median(v), "p95": pct(v, 0.95)}
                          for s, v in latency.items() if v}}, indent=2))


if __name__ == "__main__":
    main()
