"""What a synthetic dialogue must not copy: the recipe's own niche data and its held-out eval sets.

The same MinHash bands as prepare's decontamination (data/dedup.py). A generator that was shown
the bible may still reproduce a held-out eval prompt ("Hello Alex! Did you survive the release?");
trained on, that prompt would no longer measure anything. Whole dialogues are compared with the
niche sources' examples; each user turn with each held-out prompt and scripted eval turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recipe_runner.config.schema import Role
from recipe_runner.data.corpus import iter_source, plain_text
from recipe_runner.data.dedup import band_keys
from recipe_runner.data.readers import read_jsonl


def as_example(messages: list[dict]) -> dict:
    return {"messages": messages, "text": ""}


@dataclass
class References:
    threshold: float
    dialogues: np.ndarray | None = None  # band keys of the niche sources' examples
    dialogue_from: list[str] = field(default_factory=list)  # their source, row by row
    prompts: np.ndarray | None = None  # band keys of held-out user texts
    prompt_from: list[str] = field(default_factory=list)

    def dialogue_match(self, keys: np.ndarray) -> str | None:
        return _first_match(keys, self.dialogues, self.dialogue_from)

    def prompt_match(self, keys: np.ndarray) -> str | None:
        return _first_match(keys, self.prompts, self.prompt_from)


def _first_match(keys: np.ndarray, reference: np.ndarray | None, names: list[str]) -> str | None:
    if reference is None or not len(reference):
        return None
    for row in keys.reshape(-1, reference.shape[1]):
        hit = np.flatnonzero((reference == row).any(axis=1))
        if len(hit):
            return names[hit[0]]
    return None


def load_references(cfg, threshold: float, written: Path) -> References:
    """The recipe's niche sources (except `written`, the synthesis's own output) and eval sets."""
    refs = References(threshold)
    examples, origin = [], []
    for name, src in cfg.data.sources.items():
        path = Path(src.path)
        if Role(src.role) is not Role.niche or not path.exists() or plain_text(src):  # text holds no dialogue
            continue
        if path.resolve() == written.resolve() or written.resolve() in path.resolve().parents:
            continue
        for ex in iter_source(name, src, None):
            examples.append(as_example([{"role": m["role"], "content": m["content"]} for m in ex["messages"]]))
            origin.append(f"data.sources.{name} ({src.path})")
    if examples:
        refs.dialogues, refs.dialogue_from = band_keys(examples, threshold), origin
    held, origin = [], []
    e = cfg.eval
    if e.persona_prompts and Path(e.persona_prompts).exists():
        for p in read_jsonl(e.persona_prompts, "eval.persona_prompts", "prompt"):
            held.append(p)
            origin.append(f"eval.persona_prompts ({e.persona_prompts})")
    if e.dialogues and Path(e.dialogues).exists():
        for turns in read_jsonl(e.dialogues, "eval.dialogues", "turns"):
            held += turns
            origin += [f"eval.dialogues ({e.dialogues})"] * len(turns)
    if held:
        refs.prompts = band_keys([as_example([{"role": "user", "content": t}]) for t in held], threshold)
        refs.prompt_from = origin
    return refs
