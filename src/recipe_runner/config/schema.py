"""The typed schema of a run: every key declared once, with a one-line comment.

Registered in Hydra's ConfigStore as `schema`, first in `conf/config.yaml`'s defaults, so an
unknown key or a wrong type in any config group, recipe or override fails at composition with
its full key path, before any model or data is loaded. This file holds the run-wide groups and
RunConfig; the groups of using an adapter (sampling, serve, export) are in schema_use.py, those
of synthesis (synth) in schema_synth.py, both re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from recipe_runner.config.choices import (  # noqa: F401 - re-exported: the schema's vocabulary
    Answers, BadLine, DialogueMode, SearchPruner, ExportFormat, Format, Loss, MixUnit, Precision, Quant, Role, Stage, Strategy, SystemPrompt, TrainOn, WandbMode,
)
from recipe_runner.config.schema_synth import (  # noqa: F401 - re-exported: schema.X keeps naming every group
    SynthCheckConfig, SynthConfig, SynthGeneratorConfig, SynthPromptsConfig, SynthSituationsConfig,
)
from recipe_runner.config.schema_use import ExportConfig, SamplingConfig, ServeConfig
from recipe_runner.stages import run_folder, stage_list


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
    answers: Answers = Answers.source  # general: base = keep the prompts, train on the base model's own answers (data.rewrite)
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
class RewriteConfig:
    max_new_tokens: int = 160  # per regenerated answer; one cut off is trimmed to its last whole sentence
    temperature: float = 0.0  # 0 = greedy (the base's most likely answer); > 0 samples, seeded by data.mix.seed
    repetition_penalty: float = 1.0  # > 1 penalises the answer's own repeats (1.0 = the base as it is)
    batch_size: int = 32  # prompts generated together (sorted by length: little padding)


@dataclass
class DataConfig:
    sources: Dict[str, Optional[SourceConfig]] = field(default_factory=dict)  # name -> source (null drops an inherited one)
    mix: MixConfig = field(default_factory=MixConfig)  # niche:general mixing
    clean: CleanConfig = field(default_factory=CleanConfig)  # filters, applied per source
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)  # how sources with answers=base are regenerated
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
    enabled: bool = False  # judge in-character with an LLM on an OpenAI-compatible endpoint (docs/judge.md)
    base_url: str = "http://localhost:8000/v1"  # endpoint root; /chat/completions is appended
    model: str = "gpt-4o-mini"  # model name the endpoint expects
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never the key itself)
    max_calls: int = 120  # judge calls per evaluation, pairwise first, consistency the rest (cost budget)
    pairwise: bool = True  # tuned vs baseline answer per persona prompt, asked in both orders (2 calls each)
    consistency: bool = True  # prompt-to-line, line-to-line and Q&A consistency of the conversations' replies
    timeout_s: float = 60.0  # per call; 3 calls in a row without an answer end the judging of an evaluation


@dataclass
class SelectConfig:
    metric: str = "combined"  # combined (persona gain - forgetting penalty) | the early-stopping monitor
    persona_weight: float = 1.0  # weight of the adherence gain over the prompt-only baseline
    forgetting_weight: float = 1.0  # weight of general drift (fraction of the base loss) and of checkable answers lost
    distinct_weight: float = 1.0  # weight of the duplicate-answer rate above the baseline's (a templated persona)


@dataclass
class EvalConfig:
    val_every_n_epochs: int = 1  # validation (per-source loss) frequency
    limit_val_batches: float = 1.0  # share (<=1.0) or count (>1) of validation batches
    checks: bool = True  # generation checks: forgetting prompts, persona, drift, parroting, samples
    every_n_epochs: int = 1  # generation checks every N epochs (the baseline runs once, before training)
    ordinary_prompts: Optional[str] = "data/eval/ordinary_prompts.jsonl"  # everyday prompts (forgetting, distinct answers)
    still_answers: Optional[str] = "data/eval/still_answers.jsonl"  # everyday questions with checkable answers (lost ability vs style)
    max_still_answers: Optional[int] = None  # questions asked per evaluation, evenly spaced over the file (null = all; budget)
    still_answers_tokens: int = 24  # new tokens per answer to a checkable question
    still_answers_batch: int = 32  # checkable questions generated together (short prompts: a wide batch is cheap)
    min_headroom: float = 0.15  # below this much room above the baseline's adherence the rubric cannot show a gain
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
class TrialConfig:
    journal: Optional[str] = None  # the search's journal file (<sweep folder>/study.journal); None: not a search trial
    study: Optional[str] = None  # the study's name (also the W&B group)
    number: Optional[int] = None  # this trial's number in the study (its job folder's leading number)
    pruning_number: Optional[int] = None  # its number in the twin study the per-epoch scores go to
    pruner: SearchPruner = SearchPruner.none  # stop the trial when this pruner says so (hydra.sweeper.pruner)


TRIAL_KEYS = tuple(f"trial.{name}" for name in TrialConfig.__dataclass_fields__)  # never in a job folder's name


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
    trial: TrialConfig = field(default_factory=TrialConfig)  # set by hydra/sweeper=optuna for each trial, never by hand


def register() -> None:
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="schema", node=RunConfig)
    # conf/hydra/default.yaml: hydra.run.dir per stage, and the stages on the --help page (stages.py)
    for name, resolver in (("run_folder", run_folder), ("stage_list", stage_list)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def drop_null_sources(cfg) -> None:
    """`data.sources.NAME: null` in a recipe built on another removes the inherited source."""
    from omegaconf import open_dict

    with open_dict(cfg.data.sources):
        for name in [n for n, s in cfg.data.sources.items() if s is None]:
            del cfg.data.sources[name]
