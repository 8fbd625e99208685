"""The schema's keys for using a trained adapter: `sampling` (chat, serve), `serve`, `export`.

Part of the run's schema (RunConfig in schema.py holds them and re-exports these classes); kept
apart because they are read only by the stages under use/, never by training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from recipe_runner.config.choices import ExportFormat, ServeDtype, ServeEngine


@dataclass
class SamplingConfig:
    temperature: float = 0.7  # 0 = greedy; chat's and serve's default (a request may set its own)
    top_p: float = 0.9  # nucleus sampling: the smallest set of tokens holding this probability
    max_new_tokens: int = 256  # per reply (serve: the default max_tokens of a request)
    repetition_penalty: float = 1.1  # over the reply's own tokens, never the prompt's (1.0 = off)
    seed: Optional[int] = None  # fixes the sampling for reproducible replies (null = fresh each time)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # address to bind: this machine only unless you choose otherwise
    port: int = 8000  # TCP port
    adapters: Dict[str, str] = field(default_factory=dict)  # model name -> adapter (folder, run folder or last); empty = `adapter`
    api_key_env: Optional[str] = None  # environment variable holding the key clients must send as Bearer (null = no key)
    max_body_bytes: int = 65536  # larger request bodies get 413
    max_tokens: int = 512  # cap on a request's max_tokens
    max_context_tokens: int = 2048  # prompt + max_tokens; longer requests get 400
    max_concurrent: int = 4  # generations running at once: batched together (transformers), llama.cpp slots, vLLM sequences
    max_queue: int = 8  # requests waiting for a slot; beyond that, 429
    engine: ServeEngine = ServeEngine.transformers  # what generates: docs/serving.md compares them
    dtype: ServeDtype = ServeDtype.auto  # transformers: the weights' type (auto: bfloat16 on AVX512-BF16/AMX CPUs and bf16 GPUs)
    gguf_type: str = "q8_0"  # llamacpp: the base GGUF's type (q8_0 or f16), written once into paths.cache_dir/gguf
    engine_command: Optional[str] = None  # llamacpp: the llama-server executable (null = .venv/bin's, then PATH); vllm: the python that has vllm (null = this one)
    engine_threads: Optional[int] = None  # llamacpp: llama-server's -t (null = llama.cpp's choice: every core)
    engine_processes: int = 1  # llamacpp: llama-server processes on the one base file, the personas dealt among them (llama-server batches only requests with the same adapters); the cores are split
    engine_args: List[str] = field(default_factory=list)  # extra arguments for the engine's server, appended as given
    engine_start_timeout_s: float = 300.0  # the engine's server must answer its health check within this


@dataclass
class ExportConfig:
    format: ExportFormat = ExportFormat.merged  # what to write
    out: Optional[str] = None  # the folder to write (null = export/<format> beside the adapter's run)
    gguf_types: List[str] = field(default_factory=lambda: ["f16", "q8_0"])  # gguf: one file per type (f16, q8_0)
