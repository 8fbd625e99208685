"""The typed schema of a run: every key declared once, with a one-line comment.

Registered in Hydra's ConfigStore as `schema`, first in `conf/config.yaml`'s defaults, so an
unknown key or a wrong type in any config group, recipe or override fails at composition with
its full key path, before any model or data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from recipe_runner.config.choices import (  # noqa: F401 - re-exported: the schema's vocabulary
    BadLine, DialogueMode, ExportFormat, Format, Loss, MixUnit, Precision, Quant, Role, Stage, Strategy, SystemPrompt, TrainOn, WandbMode,
)


@dataclass
class ModelConfig:
    name_or_path: str = "embedded:SmolLM2-135M-Instruct"  # hub id, local folder, or embedded:NAME
    revision: Optional[str] = None  # hub revision (branch, tag or commit) for reproducibility
    quant: Quant = Quant.nf4  # how the frozen base weights are stored while the adapter trains
    double_quant: bool = True  # quantize the 4-bit scales too (~0.4 bit/param saved)
    full_finetune: bool = False  # train every weight, no adapter (needs quant=none)
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    gradient_checkpointing: bool = False  # recompute activations: slower, far less memory
    checkpoint_fraction: float = 1.0  # share of decoder layers recomputed when checkpointing (0.5 = every other)


@dataclass
class SourceConfig:
    path: str = "???"  # file or folder, relative to the working directory
    format: Format = Format.chat_jsonl  # how the file is laid out
    role: Role = Role.niche  # niche (the voice) or general (anti-forgetting mix)
    system: SystemPrompt = SystemPrompt.keep  # the system prompt each example trains with
    max_examples: Optional[int] = None  # take only the first N examples (CPU-sized cuts)
    chunk_tokens: int = 256  # text format: tokens per chunk
    chunk_overlap: int = 32  # text format: tokens shared by neighbouring chunks
    weight: float = 1.0  # share of the general budget among several general sources
    upsample: float = 1.0  # niche: copies of each training example per epoch (2.5 = twice, plus a seeded half); <= data.mix.max_repeats
    split: str = "train"  # hf_dataset: which split
    subset: Optional[str] = None  # hf_dataset: the hub dataset's configuration name
    on_bad_line: BadLine = BadLine.error  # what a malformed line does
    columns: Dict[str, str] = field(default_factory=dict)  # table/hf_dataset: {prompt, response, system?} | {text} | {messages} | {conversations} -> column; empty = detect
    role_names: Dict[str, str] = field(  # sharegpt: speaker -> role
        default_factory=lambda: {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                                 "system": "system"}
    )


@dataclass
class CleanConfig:
    empty_turns: bool = True  # drop examples with an empty or whitespace-only turn
    role_order: bool = True  # drop chats that do not alternate user/assistant (after one leading system)
    service_messages: bool = True  # drop examples with a turn that is only a messenger artefact
    patterns: List[str] = field(default_factory=list)  # extra regexes; a turn matching one is dropped as service
    min_turns: int = 1  # fewest assistant turns a chat example may have
    max_turns: Optional[int] = None  # most assistant turns (null = no limit)
    min_tokens: int = 0  # drop examples shorter than this many tokens after templating
    max_tokens: Optional[int] = None  # drop examples longer than this (null = data.max_length; never above it)
    languages: List[str] = field(default_factory=list)  # keep only these ISO 639-1 codes (py3langid); empty = off
    exact_dedup: bool = True  # drop exact repeats (whitespace-normalised) within a source
    near_dedup: bool = True  # drop near repeats within a source (MinHash LSH over word 3-grams)
    near_dup_threshold: float = 0.7  # estimated Jaccard (word 3-grams) at which two examples count as one
    decontaminate: bool = True  # drop training examples that near-duplicate any held-out example
    keep_samples: int = 3  # dropped examples kept per filter and source, for inspection


@dataclass
class MixConfig:
    general_ratio: float = 10.0  # general per niche in the training mix, in `unit`s (1:10)
    unit: MixUnit = MixUnit.tokens  # what general_ratio counts
    seed: int = 1234  # seeds the draw of general examples: same seed, same mix
    max_repeats: float = 1.0  # cap on copies of one example per epoch (general draws and niche upsample)
    fresh_each_epoch: bool = True  # draw the next general examples every epoch (more of the corpus is seen)


@dataclass
class DataConfig:
    sources: Dict[str, Optional[SourceConfig]] = field(default_factory=dict)  # name -> source (null drops an inherited one)
    mix: MixConfig = field(default_factory=MixConfig)  # niche:general mixing
    clean: CleanConfig = field(default_factory=CleanConfig)  # filters, applied per source
    placeholders: Dict[str, str] = field(default_factory=dict)  # {{key}} in any turn or text -> value
    val_fraction: float = 0.2  # held out per source, before mixing
    max_val_examples: Optional[int] = 500  # cap per source on held-out examples (a 1M corpus needs no 200k)
    split_seed: int = 42  # seeds the held-out split
    max_length: int = 512  # tokens per example; longer examples are dropped and counted
    packing: bool = True  # pack examples into max_length rows, no cross-example attention
    cache: bool = True  # reuse cleaned/tokenized sources from paths.cache_dir/data (keyed by their inputs)
    num_proc: Optional[int] = None  # tokenizing processes for sources of 20k+ examples (null = all cores, max 8)


@dataclass
class PersonaConfig:
    bible: Optional[str] = None  # YAML character bible (name, role, speech_patterns, ...)
    system_prompt: str = "You are {name}. {role}"  # format string over the bible's fields; lists joined with "; "


@dataclass
class TemplateConfig:
    chat_template: str = "tokenizer"  # tokenizer (the model's own) or a named one: chatml
    train_on: TrainOn = TrainOn.assistant  # which tokens carry loss
    persona: PersonaConfig = field(default_factory=PersonaConfig)  # the character


@dataclass
class LoraConfig:
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the adapter input
    target_modules: List[str] = field(  # module names to adapt ("all-linear" also works)
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class EarlyStoppingConfig:
    monitor: str = "val/loss"  # a logged metric: val/loss, val/loss_niche, val/loss_general, val/loss_<source>
    patience: int = 3  # epochs without improvement before stopping
    min_delta: float = 0.0  # smaller improvements do not count


@dataclass
class TrainConfig:
    max_epochs: int = 12  # upper bound; early stopping usually ends sooner
    max_steps: int = -1  # optimizer steps cap, -1 = none (handy for smoke runs)
    lr: float = 1e-4  # AdamW learning rate for the adapter
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.05  # linear warm-up share of all steps, then cosine decay
    batch_size: int = 4  # packed rows (of data.max_length tokens) per micro-batch
    grad_accum: int = 2  # micro-batches per optimizer step
    grad_clip: float = 1.0  # gradient-norm clip, 0 = off
    precision: Precision = Precision["auto"]  # Lightning precision of training and evaluation
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = "auto"  # Lightning devices per node: auto, 2, [0, 1]
    strategy: Strategy = Strategy.auto  # how training spreads over devices (deepspeed is not built: fsdp shards the same state)
    num_nodes: int = 1  # machines in a ddp/fsdp run (SLURM: set the launcher's nodes to match)
    seed: int = 0  # seeds weights of the adapter, dropout and batch order
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint_every_n_steps: int = 0  # also save a resumable checkpoint every N steps (0 = epochs only)
    resume: Optional[str] = None  # "last" (newest run of this recipe), a run folder / .ckpt path, or "sweep" (-m: skip finished jobs, resume the rest)
    num_workers: int = 0  # DataLoader workers
    loss: Loss = Loss.ce  # the per-token training loss on supervised tokens
    eaft_top_k: int = 20  # eaft: entropy over the top-k probabilities, normalised by log(k)
    kl_to_base: float = 0.0  # weight of KL(tuned || base) on general-source tokens (0 = off)


@dataclass
class JudgeConfig:
    enabled: bool = False  # score in-character 0-10 with an LLM judge (OpenAI-compatible endpoint)
    base_url: str = "http://localhost:8000/v1"  # endpoint root; /chat/completions is appended
    model: str = "gpt-4o-mini"  # model name the endpoint expects
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never the key itself)
    max_answers: int = 8  # answers judged per epoch (cost budget)


@dataclass
class SelectConfig:
    metric: str = "combined"  # combined (persona gain - forgetting penalty) | the early-stopping monitor
    persona_weight: float = 1.0  # weight of the adherence gain over the prompt-only baseline
    forgetting_weight: float = 1.0  # weight of general drift (fraction of the base loss)


@dataclass
class EvalConfig:
    val_every_n_epochs: int = 1  # validation (per-source loss) frequency
    limit_val_batches: float = 1.0  # share (<=1.0) or count (>1) of validation batches
    checks: bool = True  # generation checks: forgetting prompts, persona, drift, parroting, samples
    every_n_epochs: int = 1  # generation checks every N epochs (the baseline runs once, before training)
    ordinary_prompts: Optional[str] = "data/eval/ordinary_prompts.jsonl"  # everyday prompts (forgetting)
    persona_prompts: Optional[str] = None  # held-out persona prompts, never in the training data
    dialogues: Optional[str] = None  # scripted multi-turn conversations (8+ user turns) for drift
    max_prompts: int = 16  # per prompt set and epoch (budget)
    max_dialogues: int = 2  # per epoch: this many scripted conversations, and as many held-out ones (budget)
    max_new_tokens: int = 48  # per generated answer (budget)
    repetition_penalty: float = 1.2  # greedy, loops penalised over the reply's own tokens, not the prompt (1.0 = off)
    heldout_dialogues: int = 4  # held-out niche dialogues with at least this many user turns are replayed too (0 = off)
    batch_size: int = 8  # prompts generated together
    samples: int = 6  # answers per prompt set kept in samples.jsonl and the W&B table
    parrot_ngrams: List[int] = field(default_factory=lambda: [3, 4, 5])  # n-gram sizes mined for parroting
    parrot_min_count: int = 3  # an n-gram must occur this often in training answers to count
    parrot_top_k: int = 50  # most frequent mined n-grams tracked
    copy_span_words: int = 12  # an answer sharing this many consecutive words with training data is a copy
    max_general_drift_pct: Optional[float] = None  # reject epochs (and stop) above this general-loss drift
    parroting_patience: int = 0  # stop when the parroting rate rises this many epochs in a row (0 = off)
    select: SelectConfig = field(default_factory=SelectConfig)  # which epoch becomes adapters/best
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # optional LLM judge


@dataclass
class WandbConfig:
    enabled: bool = True  # log to Weights & Biases (offline files unless mode=online)
    project: str = "recipe-runner"  # W&B project
    entity: Optional[str] = None  # W&B team or user
    mode: WandbMode = WandbMode.auto  # where W&B writes
    tags: List[str] = field(default_factory=list)  # added to the run (plus the recipe name)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log_every_n_steps: int = 1  # training-metric logging frequency


@dataclass
class PathsConfig:
    output_dir: str = "outputs"  # runs and sweeps land here
    cache_dir: str = "${oc.env:RECIPE_RUNNER_CACHE,${oc.env:HOME}/.cache/recipe-runner}"  # converted embedded models (models/) and the data cache (data/)
    data_roots: List[str] = field(default_factory=list)  # folders a shared recipe may read data from, besides its own folder and the working directory


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
    max_concurrent: int = 1  # generations running at once (each takes a CPU core's worth of work)
    max_queue: int = 8  # requests waiting for a slot; beyond that, 429


@dataclass
class ExportConfig:
    format: ExportFormat = ExportFormat.merged  # what to write
    out: Optional[str] = None  # the folder to write (null = export/<format> beside the adapter's run)
    gguf_types: List[str] = field(default_factory=lambda: ["f16", "q8_0"])  # gguf: one file per type (f16, q8_0)


@dataclass
class SynthGeneratorConfig:
    base_url: Optional[str] = None  # an OpenAI-compatible endpoint root (.../v1: vLLM, llama.cpp, Ollama, a hosted API); null = a local transformers model
    model: Optional[str] = None  # endpoint: the model name it serves; local: folder, hub id or embedded:NAME (null = model.name_or_path)
    api_key_env: Optional[str] = None  # environment variable holding the endpoint's key (null = no key is sent)
    max_concurrent: int = 4  # endpoint: requests in flight at once
    batch_size: int = 8  # local: replies generated together
    timeout_s: float = 120.0  # endpoint: seconds per request before it is retried
    retries: int = 4  # endpoint: retries of a 429, a 5xx, a timeout or a dropped connection, with exponential backoff
    backoff_s: float = 1.0  # endpoint: the first retry's wait; doubles each retry (a Retry-After header wins)
    max_requests: Optional[int] = 5000  # hard budget over the whole synth.out folder, resumed runs included (null = none)
    max_tokens: Optional[int] = 2000000  # hard budget in prompt + completion tokens (reserved before each request, so never exceeded)


@dataclass
class SynthSituationsConfig:
    topics: List[str] = field(default_factory=list)  # what the chats are about, cycled evenly (empty = the bible's knowledge and values)
    moods: List[str] = field(default_factory=lambda: ["curious", "annoyed", "cheerful", "tired", "in a hurry", "confused"])  # the user's mood, drawn per situation
    registers: List[str] = field(default_factory=lambda: ["in short lowercase messages", "politely and formally", "with slang and typos", "in long rambling messages"])  # how the user writes
    bait_share: float = 0.2  # share of situations where the user tries to make the persona break one of the bible's taboos
    languages: List[str] = field(default_factory=list)  # ISO 639-1 codes, drawn per situation (empty = the bible's language, else en)


@dataclass
class SynthCheckConfig:
    min_marker_share: float = 0.25  # persona turns with a bible marker, per dialogue (hand-written Alex: 61 % of dialogues pass)
    near_dup_threshold: float = 0.7  # word 3-gram Jaccard at which two dialogues count as one (within the set, and against existing data)
    cut_long_turns: bool = False  # a turn that ran into synth.turn_tokens keeps its first complete sentences instead of being rejected (truncated)
    against_data: bool = True  # reject dialogues that near-duplicate the recipe's niche sources or its eval sets (contamination)
    judge_min_score: Optional[float] = None  # also score persona turns 0-10 with the LLM judge (eval.judge, a user setting); reject below this mean
    leak_patterns: List[str] = field(default_factory=lambda: [  # assistant-voice leaks, regexes on persona turns
        r"(?i)\bas an ai\b", r"(?i)\b(?:ai|large) language model\b", r"(?i)\bi(?:'m| am) (?:just )?an? (?:ai|assistant|chatbot|language model)\b",
        r"(?i)\bi (?:cannot|can't|am unable to) (?:assist|help) with\b", r"(?i)\bhow (?:can|may) i (?:help|assist) you\b"])


@dataclass
class SynthPromptsConfig:
    synopsis: str = "???"  # a situation's synopsis (conf/synth/prompts/default.yaml holds every default template)
    user_turn: str = "???"  # mode=turns: asks for the user's next message ({chat}: the chat so far)
    persona_turn: str = "???"  # mode=turns: the system prompt the persona replies from
    transcript: str = "???"  # mode=transcript: the whole dialogue as "User: ..." / "{name}: ..." lines
    bait: str = "???"  # inserted as {bait} in a baiting situation; {taboo} is one of the bible's taboos


@dataclass
class SynthConfig:
    out: str = "data/synth/${name}"  # the output folder (relative to the working directory); a rerun continues it
    mode: DialogueMode = DialogueMode.turns  # how a dialogue is generated
    synopses: int = 40  # situations, each one synopsis
    dialogues_per_synopsis: int = 2  # dialogues generated from each synopsis
    turns: List[int] = field(default_factory=lambda: [1, 2, 3, 4])  # user turns per dialogue, cycled over the dialogues
    long_share: float = 0.2  # share of dialogues with long_turns user turns instead (persona drift over a long chat)
    long_turns: int = 8  # user turns of a long dialogue
    candidates: int = 1  # mode=turns: replies asked per persona turn; the first that keeps the bible's rules is kept
    seed: int = 0  # seeds the situations and the sampling: same seed, same plan
    temperature: float = 0.9  # generator sampling
    top_p: float = 0.95  # generator sampling
    synopsis_tokens: int = 160  # completion cap of a synopsis
    turn_tokens: int = 160  # mode=turns: completion cap of one turn
    transcript_tokens: int = 2048  # mode=transcript: completion cap of a whole dialogue
    situations: SynthSituationsConfig = field(default_factory=SynthSituationsConfig)  # the spread of situations
    check: SynthCheckConfig = field(default_factory=SynthCheckConfig)  # what an accepted dialogue passes
    prompts: SynthPromptsConfig = field(default_factory=SynthPromptsConfig)  # templates given to the generator, with fields such as {name} and {synopsis}
    generator: SynthGeneratorConfig = field(default_factory=SynthGeneratorConfig)  # who generates (a user setting: endpoint, key, budget)


@dataclass
class RunConfig:
    name: str = "unnamed"  # recipe name: folders, W&B run names and tags
    description: str = ""  # one line shown by --cfg and in the W&B config
    stage: Stage = Stage.train  # what the run does
    sweep_dir: Optional[str] = None  # stage=compare: the sweep folder (outputs/sweeps/<recipe>/<time>)
    adapter: Optional[str] = None  # stage=chat/serve/export: an adapter folder, a run folder (its adapters/best), or last
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # chat and serve: how replies are sampled
    serve: ServeConfig = field(default_factory=ServeConfig)  # stage=serve
    export: ExportConfig = field(default_factory=ExportConfig)  # stage=export
    synth: SynthConfig = field(default_factory=SynthConfig)  # stage=synthesize: training dialogues from the bible


def run_folder(stage, name: str) -> str:
    """hydra.run.dir's middle part: a training stage's folder is the recipe's run, runs/<recipe>;
    talking to, serving or exporting an adapter is not a run of the recipe: use/<stage>;
    synthesizing its dialogues logs to synth/<recipe> (the dialogues go to synth.out)."""
    stage = Stage(getattr(stage, "value", stage))
    if stage is Stage.synthesize:
        return f"synth/{name}"
    return f"use/{stage.value}" if stage in (Stage.chat, Stage.serve, Stage.export) else f"runs/{name}"


def register() -> None:
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="schema", node=RunConfig)
    if not OmegaConf.has_resolver("run_folder"):
        OmegaConf.register_new_resolver("run_folder", run_folder)


def drop_null_sources(cfg) -> None:
    """`data.sources.NAME: null` in a recipe built on another removes the inherited source."""
    from omegaconf import open_dict

    with open_dict(cfg.data.sources):
        for name in [n for n, s in cfg.data.sources.items() if s is None]:
            del cfg.data.sources[name]
