"""Serving benchmark: our `stage=serve` against `transformers serve` on the same weights.

    python bench/bench_serve.py --adapter <adapter folder | run folder> [--clients 4] [--seconds 30]
        [--max-tokens 32] [--max-concurrent 1] [--threads 1] [--only ours|transformers] [--json out.json]

1. Weights. Ours loads the base and puts the adapter on it (peft, as stage=serve always does).
   `transformers serve` serves one model folder, so the adapter is merged into its base here
   (peft merge_and_unload, float32) into a temp folder, with the base's tokenizer carrying the
   card's chat template: the same function, computed the other way.
2. Servers, one after the other (never both at once on a small machine): each a subprocess on a
   free port with OMP_NUM_THREADS=--threads, polled until /v1/models answers.
     ours          python run.py stage=serve adapter=<folder> serve.max_concurrent=<--max-concurrent>
                   serve.max_queue=<clients> sampling.repetition_penalty=1.0 (plain greedy, as theirs)
     transformers  transformers serve <merged folder> --device cpu --dtype float32 (no continuous
                   batching: it runs one generation at a time, as ours does at max_concurrent=1)
3. Load. --clients threads, each with its own HTTP connection (httpx), send non-streaming chat
   requests back to back for --seconds: the persona's system prompt + one of PROMPTS (round robin),
   max_tokens=--max-tokens, temperature 0. Requests started before the deadline are waited for and
   counted; the rate is over the time until the last one ends.
4. Table: requests/s, p50 and p95 latency, completion tokens/s (the servers' usage), errors, and
   the CPU other processes used meanwhile (machine busy time minus the server's and ours: on a
   shared machine the figures are only as good as that column is near 0). Then ours/transformers.
   Before the load, each server answers PROMPTS[:4] once; the replies are compared (greedy on
   the adapter vs on the merged weights: float rounding may flip a token late in a reply).
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
    """User + system CPU seconds of a running process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ask(http: httpx.Client, url: str, model: str, system: str | None, prompt: str, max_tokens: int) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    r = http.post(f"{url}/chat/completions", timeout=300,
                  json={"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
    r.raise_for_status()
    return r.json()


def load(url: str, model: str, system: str | None, a, pid: int) -> dict:
    """--clients threads sending requests back to back for --seconds."""
    latencies, tokens, errors, lock = [], [0], [], threading.Lock()
    began = time.time()
    deadline = began + a.seconds

    def client(k: int) -> None:
        with httpx.Client() as http:
            i = k
            while time.time() < deadline:
                t = time.time()
                try:
                    reply = ask(http, url, model, system, PROMPTS[i % len(PROMPTS)], a.max_tokens)
                    with lock:
                        latencies.append(time.time() - t)
                        tokens[0] += reply["usage"]["completion_tokens"]
                except Exception as exc:  # noqa: BLE001 - counted and shown
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                i += a.clients

    busy0, mine0, server0 = busy_cpu_seconds(), cpu_seconds(), process_cpu(pid)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
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


def run_server(name: str, cmd: list[str], url: str, model: str, system: str | None, a, work: Path,
               env: dict) -> tuple[dict, list[str]]:
    print(f"[bench] {name}: starting {' '.join(cmd[:4])} ...", flush=True)
    t = time.time()
    proc = start(cmd, url, work / f"{name}.log", env)
    try:
        startup = time.time() - t
        with httpx.Client() as http:
            replies = [ask(http, url, model, system, p, a.max_tokens)["choices"][0]["message"]["content"]
                       for p in PROMPTS[:4]]  # also the warm-up
        print(f"[bench] {name}: up in {startup:.1f} s; {a.clients} clients for {a.seconds} s", flush=True)
        result = load(url, model, system, a, proc.pid)
        result["startup_s"] = startup
        return result, replies
    finally:
        stop(proc)


def print_table(results: dict) -> None:
    print(f"{'server':<14}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}{'tok/s':>8}{'errors':>8}{'requests':>10}"
          f"{'server cores':>14}{'other cores':>13}")
    for name, r in results.items():
        print(f"{name:<14}{r['requests_per_s']:>8.2f}{r['p50_s'] or 0:>8.2f}{r['p95_s'] or 0:>8.2f}"
              f"{r['completion_tokens_per_s']:>8.1f}{r['errors']:>8}{r['requests']:>10}"
              f"{r['server_cpu_cores']:>14.2f}{r['other_cpu_cores']:>13.2f}")
        for e in r["error_samples"]:
            print(f"    {name} error: {e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="adapter folder (with persona.json) or run folder")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-concurrent", type=int, default=1, help="ours: serve.max_concurrent")
    p.add_argument("--threads", default="1", help="OMP_NUM_THREADS of both servers ('' = torch's default, all "
                   "cores): on a shared 2-core machine 2 threads per generation ran 4-6x slower than 1")
    p.add_argument("--only", choices=["ours", "transformers"])
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()

    from recipe_runner.train.adapter_card import read_card, resolve_adapter
    from recipe_runner.model.embedded import resolve_model_path
    from recipe_runner.use.serve import model_name

    cache = os.environ.get("RECIPE_RUNNER_CACHE", os.path.expanduser("~/.cache/recipe-runner"))
    adapter = resolve_adapter(a.adapter, "outputs")
    card = read_card(adapter)
    name, system = model_name(card), card["system_prompt"]
    model_path = resolve_model_path(card["base"]["name_or_path"], cache)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
           "XDG_CONFIG_HOME": str(work / "xdg")}  # the user's own settings stay out
    env.pop("OMP_NUM_THREADS", None)
    if a.threads:
        env["OMP_NUM_THREADS"] = a.threads
    results, replies = {}, {}
    try:
        if a.only != "transformers":
            port = free_port()
            cmd = [sys.executable, "run.py", "stage=serve", f"adapter={adapter}", f"serve.port={port}",
                   f"serve.max_concurrent={a.max_concurrent}", f"serve.max_queue={a.clients}",
                   f"serve.max_tokens={max(a.max_tokens, 1)}", "sampling.temperature=0",
                   "sampling.repetition_penalty=1.0", "logger.wandb.enabled=false", f"paths.output_dir={work}"]
            results["ours"], replies["ours"] = run_server("ours", cmd, f"http://127.0.0.1:{port}/v1", name,
                                                          system, a, work, env)
        if a.only != "ours":
            print("[bench] transformers: merging the adapter into its base", flush=True)
            merged = str(merge(adapter, card, model_path, work / "merged"))
            port = free_port()
            cli = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
            cmd = [cli, "serve", merged, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                   "--dtype", "float32"]
            results["transformers"], replies["transformers"] = run_server(
                "transformers", cmd, f"http://127.0.0.1:{port}/v1", merged, system, a, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nadapter {adapter} (model {name}, base {card['base']['name_or_path']}); {a.clients} clients, "
          f"{a.seconds:g} s, max_tokens {a.max_tokens}, temperature 0, ours at serve.max_concurrent="
          f"{a.max_concurrent}; OMP_NUM_THREADS={a.threads or 'unset'}; {os.cpu_count()} CPUs")
    print_table(results)
    if len(replies) == 2:
        same = sum(x == y for x, y in zip(replies["ours"], replies["transformers"]))
        print(f"same greedy replies (adapter vs merged weights): {same}/{len(replies['ours'])}")
        ours, theirs = results["ours"], results["transformers"]
        print(f"ours/transformers: requests/s x{ours['requests_per_s'] / max(theirs['requests_per_s'], 1e-9):.2f}, "
              f"tokens/s x{ours['completion_tokens_per_s'] / max(theirs['completion_tokens_per_s'], 1e-9):.2f}, "
              f"p50 x{(ours['p50_s'] or 0) / max(theirs['p50_s'] or 0, 1e-9):.2f}")
    if busy := [n for n, r in results.items() if r["other_cpu_cores"] > 0.1]:
        print(f"WARNING: other processes used the CPUs during {busy}: those figures are skewed")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results, "replies": replies}, indent=2))


if __name__ == "__main__":
    main()
