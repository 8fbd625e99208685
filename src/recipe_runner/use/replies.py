"""What a generation is asked for and what it gives back, whatever the engine: Sampling and Reply.

`base` is the model name of the base with no adapter (peft's "__base__").
"""

from __future__ import annotations

from dataclasses import dataclass

BASE = "base"  # the model name of the base with no adapter (peft's "__base__")


@dataclass
class Sampling:
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1  # reply tokens only
    seed: int | None = None

    @classmethod
    def from_config(cls, scfg) -> "Sampling":
        return cls(float(scfg.temperature), float(scfg.top_p), int(scfg.max_new_tokens),
                   float(scfg.repetition_penalty), scfg.seed)


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens)
