"""Serving benchmark: our `stage=serve` on each engine, the bare engine, and `transformers serve`.

    python bench/bench_serve.py --adapter <run or adapter> [--adapter <another, same base>]
        [--servers ours-1,ours-batched-f32,ours-batched,ours-llamacpp,llama-server,transformers-serve] [--clients 1,4]
        [--seconds 30] [--max-tokens 64] [--max-concurrent 4] [--threads N] [--gguf-type q8_0] [--json F]

Servers, one after the other (never two at once on a small machine), each a subprocess on a free
port with OMP_NUM_THREADS=--threads, polled until /v1/models answers:
  ours-1              stage=serve, serve.engine=transformers, serve.max_concurrent=1, serve.dtype=float32:
                      one generation at a time, as stage=serve was before engines
  ours-batched-f32    the same at serve.max_concurrent=--max-concurrent: continuous batching
  ours-batched        the default: batching and serve.dtype=auto (bfloat16 on AVX512-BF16/AMX CPUs)
  ours-llamacpp-2p    the same with serve.engine_processes=2: two llama-servers on the one base file, a
                      persona each, --threads split between them
  ours-llamacpp       serve.engine=llamacpp: llama-server with the base GGUF (--gguf-type) and every
                      adapter's GGUF LoRA, behind our front (persona prompt, template, limits, counts)
  llama-server        the bare engine: the same files, its own OpenAI endpoint and chat template, the
                      persona by the request's `lora` field, the client sending the system prompt
  transformers-serve  `transformers serve` on the first adapter merged into its base (float32)
Load: for each --clients count, that many threads with their own HTTP connection send non-streamed
chat requests back to back for --seconds (one of PROMPTS each, round robin, and the personas in
turn: two adapters = two personas on one base), max_tokens=--max-tokens, greedy, no repetition
penalty. Requests started before the deadline are waited for; rates are over the time until the
last ends. Table: requests/s, p50/p95 latency, completion tokens/s (the servers' usage counts),
errors, the server's CPU cores and the CPU other processes used meanwhile (near 0, or the figures
are skewed). Each server first answers PROMPTS[:4] as the first persona: the replies are compared
(float rounding between engines may flip a token late in a reply).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from machine import busy_cpu_seconds, cpu_seconds  # noqa: E402  (bench/ is the script folder)

PROMPTS = [
    "What do you think about Kubernetes?",
    "How should I name my git branches?",
    "Is it worth learning Rust this year?",
    "Our deploy failed at 3 am. What now?",
    "Give me one tip for writing a good commit message.",
    "What is the capital of France?",
    "Explain DNS in two sentences.",
    "Should a startup use microservices?",
]


def merge(adapter: Path, card: dict, model_path: str, out: Path) -> Path:
    """The adapter folded into a float32 copy of its base: a plain transformers folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(model_path)
    tok.chat_template = card["chat_template"] or tok.chat_template
    tok.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, log: Path, env: dict, timeout: float = 600) -> subprocess.Popen:
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{cmd[:3]} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process and all its descendants (an engine the server
    started counts as the server's), all threads (Linux /proc)."""
    parents, times = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, grew = {pid}, True
    while grew:
        more = {c for c, p in parents.items() if p in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(times.get(p, 0.0) for p in tree)


def ask(http: httpx.Client, url: str, persona: "Persona", prompt: str, max_tokens: int) -> dict:
    messages = ([{"role": "system", "content": persona.system}] if persona.system else []) + [
        {"role": "user", "content": prompt}]
    r = http.post(f"{url}/chat/completions", timeout=300,
                  json={"model": persona.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                        **persona.extra})
    r.raise_for_status()
    return r.json()


def load(url: str, personas: list, clients: int, a, pid: int) -> dict:
    """`clients` threads sending requests back to back for --seconds; request i goes to persona i mod n."""
    latencies, tokens, errors, lock = [], [0], [], threading.Lock()
    began = time.time()
    deadline = began + a.seconds

    def client(k: int) -> None:
        with httpx.Client() as http:
            i = k
            while time.time() < deadline:
                t = time.time()
                try:
                    reply = ask(http, url, personas[i % len(personas)], PROMPTS[i % len(PROMPTS)], a.max_tokens)
                    with lock:
                        latencies.append(time.time() - t)
                        tokens[0] += reply["usage"]["completion_tokens"]
                except Exception as exc:  # noqa: BLE001 - counted and shown
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                i += clients

    busy0, mine0, server0 = busy_cpu_seconds(), cpu_seconds(), process_cpu(pid)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - began
    server_cpu = process_cpu(pid) - server0
    others = (busy_cpu_seconds() - busy0 - server_cpu - (cpu_seconds() - mine0)) / wall
    lat = sorted(latencies)
    return {"requests": len(lat), "wall_s": wall, "requests_per_s": len(lat) / wall,
            "p50_s": statistics.median(lat) if lat else None,
            "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
            "completion_tokens_per_s": tokens[0] / wall, "errors": len(errors), "error_samples": errors[:3],
            "server_cpu_cores": server_cpu / wall, "other_cpu_cores": max(others, 0.0)}


def run_server(name: str, cmd: list[str], url: str, personas: list, a, work: Path, env: dict
               ) -> tuple[dict, list[str]]:
    """One server: started, warmed up on PROMPTS[:4] (the replies compared across servers), then each
    of --clients in turn; stopped."""
    print(f"[bench] {name}: starting {' '.join(cmd[:4])} ...", flush=True)
    t = time.time()
    proc = start(cmd, url, work / f"{name}.log", env)
    try:
        startup = time.time() - t
        with httpx.Client() as http:
            replies = [ask(http, url, personas[0], p, a.max_tokens)["choices"][0]["message"]["content"]
                       for p in PROMPTS[:4]]
        results = {}
        for clients in a.clients:
            print(f"[bench] {name}: up in {startup:.1f} s; {clients} clients for {a.seconds} s", flush=True)
            results[clients] = {**load(url, personas, clients, a, proc.pid), "startup_s": startup}
        return results, replies
    finally:
        stop(proc)


def print_table(results: dict) -> None:
    print(f"{'server':<22}{'clients':>8}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}{'tok/s':>8}{'errors':>8}{'requests':>10}"
          f"{'server cores':>14}{'other cores':>13}")
    for name, by_clients in results.items():
        for clients, r in by_clients.items():
            print(f"{name:<22}{clients:>8}{r['requests_per_s']:>8.2f}{r['p50_s'] or 0:>8.2f}{r['p95_s'] or 0:>8.2f}"
                  f"{r['completion_tokens_per_s']:>8.1f}{r['errors']:>8}{r['requests']:>10}"
                  f"{r['server_cpu_cores']:>14.2f}{r['other_cpu_cores']:>13.2f}")
            for e in r["error_samples"]:
                print(f"    {name} error: {e}")


class Persona:
    """What one request names: the model, the system prompt the client sends, extra body fields."""

    def __init__(self, model: str, system: str | None, extra: dict | None = None):
        self.model, self.system, self.extra = model, system, extra or {}


PAIRS = (("ours-batched-f32", "ours-1"), ("ours-batched", "ours-1"), ("ours-llamacpp", "llama-server"),
         ("ours-llamacpp", "ours-1"), ("ours-llamacpp-2p", "ours-llamacpp"))
SERVERS = ("ours-1", "ours-batched-f32", "ours-batched", "ours-llamacpp", "ours-llamacpp-2p", "llama-server",
           "transformers-serve")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, action="append",
                   help="adapter folder (with persona.json) or run folder; twice for two personas on one base")
    p.add_argument("--clients", default="1,4", help="client counts, each a separate load on the same server")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-concurrent", type=int, default=4, help="serve.max_concurrent of ours-batched and "
                   "ours-llamacpp, and llama-server's -np")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of every server (OMP_NUM_THREADS, "
                   "llama.cpp's -t)")
    p.add_argument("--servers", default="ours-1,ours-batched-f32,ours-batched,ours-llamacpp,llama-server",
                   help=f"which, in order, one at a time: {', '.join(SERVERS)}")
    p.add_argument("--gguf-type", default="q8_0", help="llama.cpp's base GGUF type")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    a.clients = [int(c) for c in str(a.clients).split(",")]
    servers = a.servers.split(",")
    if bad := [s for s in servers if s not in SERVERS]:
        raise SystemExit(f"--servers: unknown {bad}; choose from {SERVERS}")

    from recipe_runner.train.adapter_card import read_card, resolve_adapter
    from recipe_runner.model.embedded import resolve_model_path
    from recipe_runner.use.serve import model_name

    cache = os.environ.get("RECIPE_RUNNER_CACHE", os.path.expanduser("~/.cache/recipe-runner"))
    adapters = [resolve_adapter(x, "outputs") for x in a.adapter]
    cards = [read_card(x) for x in adapters]
    names = [model_name(c) for c in cards]
    if len(set(names)) < len(names):
        names = [f"{n}{i}" for i, n in enumerate(names)]
    ours = [Persona(n, None) for n in names]  # our front adds each persona's system prompt itself
    model_path = resolve_model_path(cards[0]["base"]["name_or_path"], cache)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
           "XDG_CONFIG_HOME": str(work / "xdg"), "OMP_NUM_THREADS": str(a.threads)}  # the user's settings stay out
    # quoted: a sweep job's folder (`5_lora.r=16,train.lr=0.004`) has Hydra's `=` and `,` in it
    spec = "{" + ",".join(f"{n}:'{str(x)}'" for n, x in zip(names, adapters)) + "}"
    results, replies = {}, {}

    def front(engine: str, concurrent: int, *extra: str) -> tuple[list[str], str]:
        port = free_port()
        return [sys.executable, "run.py", "stage=serve", f"serve.adapters={spec}", f"serve.port={port}",
                f"serve.engine={engine}", f"serve.max_concurrent={concurrent}", f"serve.max_queue={max(a.clients)}",
                f"serve.max_tokens={max(a.max_tokens, 1)}", "sampling.temperature=0",
                "sampling.repetition_penalty=1.0", "logger.wandb.enabled=false", f"paths.output_dir={work}",
                *extra], f"http://127.0.0.1:{port}/v1"

    try:
        for server in servers:
            if server == "ours-1":  # what stage=serve was before engines: float32, one generation at a time
                cmd, url = front("transformers", 1, "serve.dtype=float32")
                personas = ours
            elif server in ("ours-batched", "ours-batched-f32"):  # the default (serve.dtype=auto), or float32
                cmd, url = front("transformers", a.max_concurrent, *(["serve.dtype=float32"] if "f32" in server else []))
                personas = ours
            elif server == "ours-llamacpp":
                cmd, url = front("llamacpp", a.max_concurrent, f"serve.gguf_type={a.gguf_type}",
                                 f"serve.engine_threads={a.threads}")
                personas = ours
            elif server == "ours-llamacpp-2p":  # two llama-servers on the same base file, a persona each
                cmd, url = front("llamacpp", a.max_concurrent, f"serve.gguf_type={a.gguf_type}",
                                 "serve.engine_processes=2", f"serve.engine_threads={max(1, a.threads // 2)}")
                personas = ours
            elif server == "llama-server":
                cmd, url, personas = bare_llama_server(adapters, cards, model_path, cache, a)
            else:
                print("[bench] transformers serve: merging the first adapter into its base", flush=True)
                merged = str(merge(adapters[0], cards[0], model_path, work / "merged"))
                port = free_port()
                cli = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
                cmd = [cli, "serve", merged, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                       "--dtype", "float32"]
                url, personas = f"http://127.0.0.1:{port}/v1", [Persona(merged, cards[0]["system_prompt"])]
            results[server], replies[server] = run_server(server, cmd, url, personas, a, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    from machine import describe  # noqa: E402

    print(f"\n{describe()}; adapters {', '.join(names)} on {cards[0]['base']['name_or_path']}; clients {a.clients}, "
          f"{a.seconds:g} s each, max_tokens {a.max_tokens}, greedy, threads {a.threads}, "
          f"max_concurrent {a.max_concurrent}, GGUF {a.gguf_type}")
    print_table(results)
    for x, y in PAIRS:
        if x in replies and y in replies:
            same = sum(u == v for u, v in zip(replies[x], replies[y]))
            print(f"same greedy replies, {x} vs {y}: {same}/{len(replies[x])}")
    for x, y in PAIRS:
        if x in results and y in results:  # tokens/s
            for c in a.clients:
                r = results[x][c]["completion_tokens_per_s"] / max(results[y][c]["completion_tokens_per_s"], 1e-9)
                print(f"{x}/{y} at {c} clients: tokens/s x{r:.2f}")
    if busy := [n for n, r in results.items() if any(v["other_cpu_cores"] > 0.1 for v in r.values())]:
        print(f"WARNING: other processes used the CPUs during {busy}: those figures are skewed")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results, "replies": replies}, indent=2))


def bare_llama_server(adapters: list[Path], cards: list[dict], model_path: str, cache: str, a):
    """llama-server alone, the same base GGUF and GGUF LoRAs ours loads (from the cache), through its own
    OpenAI endpoint (its own chat template: the base's ChatML), the persona by the request's `lora` field
    and the client sending the system prompt."""
    from recipe_runner.use.engine_llamacpp import llama_server_binary, lora_gguf
    from recipe_runner.use.gguf_base import base_gguf

    base = base_gguf(model_path, cards[0], cache, a.gguf_type)
    loras = [lora_gguf(x, c, model_path, cache, f"p{i}") for i, (x, c) in enumerate(zip(adapters, cards))]
    port = free_port()
    cmd = [llama_server_binary(None), "-m", str(base), "--lora", ",".join(str(p) for p in loras),
           "--lora-init-without-apply", "--host", "127.0.0.1", "--port", str(port), "-np", str(a.max_concurrent),
           "-c", str(a.max_concurrent * 2048), "-t", str(a.threads), "--no-webui"]
    personas = [Persona("base", c["system_prompt"], {
        "lora": [{"id": j, "scale": 1.0 if j == i else 0.0} for j in range(len(loras))],
        "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}) for i, c in enumerate(cards)]
    return cmd, f"http://127.0.0.1:{port}/v1", personas


if __name__ == "__main__":
    main()
