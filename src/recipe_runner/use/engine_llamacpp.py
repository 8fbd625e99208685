"""serve.engine=llamacpp: the personas on llama.cpp's llama-server, one base GGUF with every persona's
LoRA as a GGUF adapter, the persona chosen per request.

Our front (serve.py) does what it does for every engine: the OpenAI API, the persona's system
prompt, its chat template (the prompt goes to llama-server as token ids, so llama.cpp's tokenizer
and templates never touch it), the limits and counts. This module turns a request into llama-server's
native /completion call and its stream back into text:

- every request states the scale of every adapter (1 for its persona, 0 for the rest, all 0 for
  `base`): llama-server applies a list per request and caches prompts per adapter set, and a request
  that left the list out could be answered with the previous request's adapters (seen with 0.3.x);
- sampling as ours: top_k and min_p off (llama.cpp's defaults, 40 and 0.05, would narrow what
  top_p leaves), temperature 0 = greedy. The repetition penalty differs a little: llama.cpp's covers
  the last `max_tokens` tokens of prompt + reply, ours the reply's only;
- stop at the template's end token: the GGUF marks <|im_end|> end-of-generation (gguf_export.py).

The base GGUF (serve.gguf_type, q8_0 by default) and each adapter's GGUF LoRA are written once into
the cache (use/gguf_base.py, use/gguf_lora.py). llama-server gets serve.max_concurrent slots, each
with serve.max_context_tokens of context, and continuous batching across them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator


from recipe_runner.errors import RecipeError
from recipe_runner.use.engine_process import EngineProcess, free_port
from recipe_runner.use.personas import PersonaCards
from recipe_runner.use.replies import Reply, Sampling

BUILD_HINT = "bash setup.sh --llamacpp  (builds llama-server once, ~5 min on 2 cores; docs/serving.md)"


def llama_server_binary(configured: str | None) -> str:
    """serve.engine_command, else the one setup.sh --llamacpp linked into this venv, else PATH's."""
    if configured:
        found = shutil.which(os.path.expanduser(configured))
        if not found:
            raise RecipeError(f"serve.engine_command={configured}: no such executable")
        return found
    beside = Path(sys.prefix) / "bin" / "llama-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("llama-server")
    if not found:
        raise RecipeError(f"serve.engine=llamacpp needs llama.cpp's llama-server, which is not installed: {BUILD_HINT}; "
                          f"or point serve.engine_command at one")
    return found


def lora_gguf(folder: Path, card: dict, model_path: str, cache_dir: str, name: str) -> Path:
    """The adapter as a GGUF LoRA, cached by the adapter files' content."""
    from recipe_runner.use.gguf_base import partial
    from recipe_runner.use.gguf_lora import check_lora, write_gguf_lora

    check_lora(folder)
    digest = hashlib.sha256()
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((folder / file).read_bytes())
    path = Path(cache_dir).expanduser() / "gguf" / f"lora-{digest.hexdigest()[:16]}.gguf"
    if not path.is_file():
        with partial(path) as tmp:
            write_gguf_lora(folder, card, model_path, tmp, name)
    return path


class LlamaCppPersonas(PersonaCards):
    def __init__(self, adapters: dict[str, Path], cache_dir: str, named_base: str | None, serve_cfg, run_dir: Path):
        from recipe_runner.use.gguf_base import base_gguf
        from recipe_runner.use.gguf_export import check_gguf_base, gguf_types

        v = serve_cfg
        gguf_types([v.gguf_type])  # a wrong serve.gguf_type or a missing binary: said before anything loads
        binary = llama_server_binary(v.engine_command)
        super().__init__(adapters, cache_dir, named_base)
        check_gguf_base(self.model_path)  # before anything is written: a base GGUF cannot describe is refused
        first = next(iter(self.cards))
        base = base_gguf(self.model_path, self.cards[first], cache_dir, v.gguf_type)
        loras = {n: lora_gguf(self.folders[n], self.cards[n], self.model_path, cache_dir, n) for n in self.cards}
        self.lora_ids = {n: i for i, n in enumerate(loras)}  # llama-server numbers adapters in --lora order
        slots = int(v.max_concurrent)
        # llama-server batches only requests whose adapter scales are equal (two personas take turns), so
        # serve.engine_processes > 1 deals the personas among several servers on the same mmapped base
        # file, each batching its own persona's requests on its share of the cores
        count = max(1, min(int(v.engine_processes), len(loras)))
        threads = v.engine_threads or (max(1, (os.cpu_count() or 1) // count) if count > 1 else None)
        self.engines = []
        try:
            self.start_engines(count, binary, base, loras, slots, threads, v, run_dir)
        except BaseException:
            self.close()  # the servers already up stop with this one's failure
            raise
        self.described = (f"llama.cpp ({Path(binary).name}, base {v.gguf_type} + {len(loras)} LoRA, {slots} slots"
                          + (f", {count} processes x {threads} threads" if count > 1 else "") + ")")

    def start_engines(self, count: int, binary: str, base: Path, loras: dict, slots: int, threads, v, run_dir) -> None:
        for i in range(count):
            # one --lora with the files comma-separated: a repeated --lora keeps only the last (llama.cpp 0.5)
            argv = [binary, "-m", str(base), "--lora", ",".join(str(p) for p in loras.values()),
                    "--lora-init-without-apply", "--host", "127.0.0.1", "--port", str(port := free_port()),
                    "-c", str(slots * int(v.max_context_tokens)), "-np", str(slots), "--no-webui",
                    *(["-t", str(threads)] if threads else []), *map(str, v.engine_args)]
            log = Path(run_dir) / ("engine.log" if count == 1 else f"engine{i}.log")
            self.engines.append(EngineProcess("llama-server", argv, port, log, "/health",
                                              float(v.engine_start_timeout_s)))

    def body(self, name: str, ids, s: Sampling) -> dict:
        greedy = s.temperature <= 0
        return {"prompt": [int(t) for t in ids[0]], "n_predict": s.max_new_tokens, "stream": True,
                "temperature": 0.0 if greedy else s.temperature, "top_p": 1.0 if greedy else s.top_p,
                "top_k": 0, "min_p": 0.0, "repeat_penalty": s.repetition_penalty,
                "repeat_last_n": s.max_new_tokens if s.repetition_penalty != 1.0 else 0,
                "seed": -1 if s.seed is None else int(s.seed) % 2**32, "cache_prompt": True,
                "lora": [{"id": i, "scale": 1.0 if n == name else 0.0} for n, i in self.lora_ids.items()]}

    def stream(self, name: str, messages: list[dict], sampling: Sampling, ids=None) -> Iterator[str]:
        self.check_name(name)
        ids = self.encode(name, messages) if ids is None else ids
        parts, last = [], None
        engine = self.engines[self.lora_ids.get(name, 0) % len(self.engines)]  # persona i to server i mod N; base: 0
        for event in engine.events("/completion", self.body(name, ids, sampling)):
            if event.get("content"):
                parts.append(event["content"])
                yield event["content"]
            if event.get("stop"):
                last = event
        if last is None:
            raise RuntimeError(f"llama-server ended the stream without its last event{engine.failure()}")
        finish = "length" if last.get("stop_type") == "limit" else "stop"
        yield Reply("".join(parts).strip(), int(ids.shape[1]), int(last.get("tokens_predicted", 0)), finish)

    def close(self) -> None:
        for engine in self.engines:
            engine.stop()
