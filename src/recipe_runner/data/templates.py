"""Templates: conversation -> token ids + labels (the persona system prompt comes from data/bible.py).

Labels are -100 everywhere except the assistant turns and the end-of-turn token that closes
each of them (so the model learns to stop). Assistant spans are found by rendering growing
prefixes of the conversation with the chat template, so any template works, whether or not
it carries `{% generation %}` markers.
"""

from __future__ import annotations

import numpy as np

from recipe_runner.errors import RecipeError
from recipe_runner.config.schema import SystemPrompt, TemplateConfig, TrainOn
from recipe_runner.data.chat_format import end_of_turn_id

IGNORE = -100


class Encoder:
    """Turns normalised examples into input_ids and labels, a batch at a time.

    Strings are rendered per example (jinja, ~20 us each); the tokenizer then runs once per
    batch in Rust with offsets, and labels come from the offsets with numpy. An assistant turn
    marked `train: false` stays in the context but carries no loss.
    """

    def __init__(self, tokenizer, cfg: TemplateConfig, systems: dict[str, SystemPrompt], persona: str | None):
        self.tok = tokenizer
        self.train_on = TrainOn(cfg.train_on)
        self.systems = systems  # source name -> persona | keep
        self.persona = persona
        self.eot = end_of_turn_id(tokenizer)

    def __call__(self, example: dict) -> dict:
        return {k: v[0] for k, v in self.batch([example]).items()}

    def batch(self, examples: list[dict]) -> dict[str, list]:
        texts, spans, n_turns = [], [], []
        for ex in examples:
            if ex["text"]:
                texts.append(ex["text"] + (self.tok.eos_token or ""))
                spans.append(None)  # plain text: every token is trained on
                n_turns.append(0)
                continue
            messages = self.with_system(ex["source"], ex["messages"])
            full = self.tok.apply_chat_template(strip(messages), tokenize=False)
            texts.append(full)
            spans.append(self.assistant_spans(messages, full, ex["source"]))
            n_turns.append(len(spans[-1]))
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = {"input_ids": [], "labels": [], "n_turns": n_turns, "n_tokens": [], "n_supervised": [], "n_eot": []}
        for ids, offsets, sp in zip(enc["input_ids"], enc["offset_mapping"], spans):
            labels = np.asarray(ids, dtype=np.int64)
            if sp is not None and self.train_on is TrainOn.assistant:
                labels = np.where(inside(np.asarray(offsets, dtype=np.int64).reshape(-1, 2)[:, 0], sp), labels, IGNORE)
            out["input_ids"].append(ids)
            out["labels"].append(labels.tolist())
            out["n_tokens"].append(len(ids))
            out["n_supervised"].append(int((labels != IGNORE).sum()))
            out["n_eot"].append(int((labels == self.eot).sum()))
        return out

    def with_system(self, source: str, messages: list[dict]) -> list[dict]:
        if self.systems.get(source) is SystemPrompt.persona and self.persona:
            return [{"role": "system", "content": self.persona}] + [m for m in messages if m["role"] != "system"]
        return messages

    def assistant_spans(self, messages: list[dict], full: str, source: str) -> list[tuple[int, int]]:
        """Character spans of the trained assistant turns (through their end-of-turn token)."""
        spans, plain = [], strip(messages)
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or m.get("train") is False:
                continue
            before = self.tok.apply_chat_template(plain[:i], tokenize=False, add_generation_prompt=True)
            last = i == len(messages) - 1  # the whole conversation: already rendered (saves a third of the jinja)
            through = full if last else self.tok.apply_chat_template(plain[: i + 1], tokenize=False)
            if not (full.startswith(before) and full.startswith(through)):
                raise RecipeError(
                    f"template.chat_template: rendering of source {source!r} is not prefix-stable "
                    "(the template rewrites earlier turns); use template.train_on=all or chat_template=chatml"
                )
            # through ends "...reply<|im_end|>\n": supervise up to and including the end-of-turn token
            spans.append((len(before), len(through.rstrip())))
        return spans


def strip(messages: list[dict]) -> list[dict]:
    """Only role and content reach the chat template (some templates print unknown keys)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def inside(starts: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """For each token start offset: does it fall in one of the sorted, disjoint [a, b) spans?"""
    if not spans:
        return np.zeros(len(starts), dtype=bool)
    a, b = np.asarray(spans, dtype=np.int64).T
    k = np.searchsorted(a, starts, side="right") - 1
    return (k >= 0) & (starts < b[np.maximum(k, 0)])


def preflight(columns: dict[str, np.ndarray], eot_id: int, train_on: TrainOn, source: str) -> None:
    """Fail before training if an example has nothing to learn or its end-of-turn is masked.

    `columns` holds n_supervised, n_turns and n_eot (supervised end-of-turn tokens) per example.
    """
    empty = np.flatnonzero(columns["n_supervised"] == 0)
    if len(empty):
        raise RecipeError(f"data.sources.{source}: example {int(empty[0])} has no supervised tokens after templating")
    if train_on is TrainOn.assistant:
        masked = np.flatnonzero((columns["n_turns"] > 0) & (columns["n_eot"] < columns["n_turns"]))
        if len(masked):
            i = int(masked[0])
            raise RecipeError(
                f"data.sources.{source}: example {i} has {columns['n_turns'][i]} trained assistant turn(s) but the "
                f"end-of-turn token (id {eot_id}) is masked in some; the model would never learn to stop"
            )
