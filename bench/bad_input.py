"""Malformed corpus files, as a new user makes them: what `stage=prepare` answers, and how soon.

    python bench/bad_input.py              # named cases through the real CLI + random cases in-process
    python bench/bad_input.py --repeat 3 --no-random    # the CLI cases only, median of 3 runs each

Part 1 runs `python run.py stage=prepare` on each named file (the default recipe with its niche
source replaced; the eval case runs stage=train with eval.persona_prompts replaced) and prints
the exit code, the seconds from the command to its answer (the `error:` line on stderr) and to
the process's exit, and the last line of the answer. Part 2 feeds seeded random bytes and random
JSON shapes to every reader (iter_source, as prepare does) and counts: records, clear errors
(RecipeError naming the file), and anything else (tracebacks; must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
GOOD = json.dumps(CHAT)


def named_cases() -> dict[str, tuple[str, bytes]]:
    """name -> (format, file bytes)."""
    return {
        "broken JSON": ("chat_jsonl", (GOOD + "\n" + '{"messages": [' + "\n").encode()),
        "invalid UTF-8": ("chat_jsonl", (GOOD + "\n").encode() + b'{"messages": "\xff\xfe"}\n'),
        "unknown role": ("chat_jsonl", json.dumps({"messages": [{"role": "bot", "content": "x"}]}).encode() + b"\n"),
        "missing messages": ("chat_jsonl", b'{"text": "hello"}\n'),
        "content not a string": ("chat_jsonl", json.dumps(
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}).encode() + b"\n"),
        "no assistant turn": ("chat_jsonl", json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode() + b"\n"),
        "Alpaca declared as chat": ("chat_jsonl", b'{"instruction": "a", "output": "b"}\n'),
        "NUL bytes": ("chat_jsonl", b"\x00" * 64 + b"\n"),
        "binary garbage": ("chat_jsonl", bytes(random.Random(0).randrange(256) for _ in range(2048))),
        "empty file": ("chat_jsonl", b""),
        "BOM + CRLF (valid: must load)": ("chat_jsonl", b"\xef\xbb\xbf" + "".join(json.dumps(
            {"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"yo {i} " * 3}]})
            + "\r\n" for i in range(20)).encode()),
        "deeply nested arrays": ("chat_jsonl", ("[" * 100_000 + "]" * 100_000 + "\n").encode()),
        "ShareGPT without conversations": ("sharegpt", b'{"messages": []}\n'),
        "CSV with invalid UTF-8": ("table", b"prompt,response\nhi,\xff\xfe\n"),
        "CSV without the columns": ("table", b"a,b\n1,2\n"),
        "a JSON array in a .jsonl": ("chat_jsonl", ("[" + GOOD + "]\n").encode()),
        "eval prompts: broken JSON (train)": ("eval", ('{"prompt": "hi"}\n{"prompt": \n').encode()),
    }


def overrides(fmt: str, path: Path) -> list[str]:
    if fmt == "eval":  # read by the evaluation of stage=train
        return [f"eval.persona_prompts={path}"]
    return ["stage=prepare", f"data.sources.alex.path={path}", f"data.sources.alex.format={fmt}",
            "data.sources.alex.max_examples=null"]


def timed_run(args: list[str], env: dict) -> tuple[int, float, float, str]:
    """(exit code, seconds to the `error:` line (to the exit if none), seconds to the exit, stderr)."""
    started = time.time()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    answered, lines = None, []
    for line in proc.stderr:  # stderr is line-buffered: the line arrives when it is printed
        lines.append(line)
        if answered is None and line.startswith("error:"):
            answered = time.time() - started
    proc.wait()
    ended = time.time() - started
    return proc.returncode, answered or ended, ended, "".join(lines)


def part1(tmp: Path, repeat: int = 1) -> None:
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    print(f"{'case':<34} {'exit':>4} {'answer s':>8} {'exit s':>6}  answer")
    for name, (fmt, data) in named_cases().items():
        suffix = "csv" if fmt == "table" else "jsonl"
        path = tmp / f"{name.split()[0].lower().rstrip(':')}-{abs(hash(name)) % 10**6}.{suffix}"
        path.write_bytes(data)
        runs = [timed_run([sys.executable, "run.py", *overrides(fmt, path), "logger.wandb.enabled=false",
                           f"paths.output_dir={tmp / 'out'}"], env) for _ in range(repeat)]
        code, _, _, stderr = runs[-1]
        answered = statistics.median(r[1] for r in runs)
        ended = statistics.median(r[2] for r in runs)
        answer = (stderr.strip().splitlines() or ["(ok)"])[-1] if code else "loaded"
        traceback = "Traceback" in stderr
        print(f"{name:<34} {code:>4} {answered:>8.1f} {ended:>6.1f}  {'TRACEBACK ' if traceback else ''}{answer[:150]}")


def random_json(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == "dict":
        keys = ["messages", "conversations", "role", "content", "from", "value", "text", "instruction", "output", "x"]
        return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}
    return {"null": None, "bool": rng.random() < 0.5, "int": rng.randrange(-9, 99), "float": rng.random(),
            "str": "".join(rng.choice("ab yo\n\u00e9") for _ in range(rng.randrange(12)))}[kind]


def part2(tmp: Path, n: int = 300) -> None:
    from transformers import AutoTokenizer

    from recipe_runner.config.schema import Format, SourceConfig
    from recipe_runner.data.corpus import load_source
    from recipe_runner.errors import RecipeError
    from recipe_runner.model.embedded import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded:SmolLM2-135M-Instruct", os.environ.get(
        "RECIPE_RUNNER_CACHE", os.path.expanduser("~/.cache/recipe-runner"))))
    rng = random.Random(20261201)
    counts = {"records": 0, "clear error": 0, "other exception": 0}
    suffix = {Format.chat_jsonl: "jsonl", Format.sharegpt: "jsonl", Format.alpaca: "jsonl", Format.text_jsonl: "jsonl",
              Format.text: "txt", Format.table: "csv"}
    for i in range(n):
        for fmt, ext in suffix.items():
            path = tmp / f"r{i}-{fmt.value}.{ext}"
            if ext == "jsonl" and i % 2:
                path.write_text("".join(json.dumps(random_json(rng)) + "\n" for _ in range(rng.randrange(1, 4))))
            else:
                path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(300))))
            try:
                load_source("fuzz", SourceConfig(path=str(path), format=fmt), tok)
                counts["records"] += 1
            except RecipeError:
                counts["clear error"] += 1
            except Exception as exc:  # noqa: BLE001 - counted: the point of the bench
                counts["other exception"] += 1
                print(f"  {fmt.value} {path.name}: {type(exc).__name__}: {exc}")
    total = sum(counts.values())
    print(f"\nrandom cases through every reader: {total:,} ({n} x {len(suffix)} formats): "
          + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="CLI runs per named case; the median seconds are shown")
    parser.add_argument("--no-random", action="store_true", help="skip part 2 (random cases in-process)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        part1(Path(tmp), opts.repeat)
        if not opts.no_random:
            part2(Path(tmp))
