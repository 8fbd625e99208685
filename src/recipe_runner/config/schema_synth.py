"""The schema's keys of `synth`: stage=synthesize, training dialogues written from the bible.

Part of the run's schema (RunConfig in schema.py holds `synth: SynthConfig` and re-exports these
classes); kept apart because only synthesize/ reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from recipe_runner.config.choices import DialogueMode


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
