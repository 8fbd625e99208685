"""Templates: persona bible -> system prompt; conversation -> token ids + labels.

Labels are -100 everywhere except the assistant turns and the end-of-turn token that closes
each of them (so the model learns to stop). Assistant spans are found by rendering growing
prefixes of the conversation with the chat template, so any template works, whether or not
it carries `{% generation %}` markers.
"""

from __future__ import annotations

import string
from pathlib import Path

import yaml

from .errors import RecipeError
from .schema import SystemPrompt, TemplateConfig, TrainOn

IGNORE = -100

# Named templates a recipe can ask for instead of the tokenizer's own (template.chat_template).
NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
        "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}


def load_bible(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"template.persona.bible: {p} does not exist")
    try:
        bible = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"template.persona.bible: {p} is not valid YAML: {exc}") from None
    if not isinstance(bible, dict) or "name" not in bible:
        raise RecipeError(f"template.persona.bible: {p} must be a mapping with at least `name`")
    return bible


def render_persona(cfg: TemplateConfig) -> str | None:
    """The bible rendered through template.persona.system_prompt; lists joined with '; '."""
    bible = load_bible(cfg.persona.bible)
    if not bible:
        return None
    fields = {k: "; ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in bible.items()}
    wanted = [f for _, f, _, _ in string.Formatter().parse(cfg.persona.system_prompt) if f]
    missing = [f for f in wanted if f not in fields]
    if missing:
        raise RecipeError(
            f"template.persona.system_prompt uses {missing} but {cfg.persona.bible} has only {sorted(fields)}"
        )
    return " ".join(cfg.persona.system_prompt.format(**fields).split())


def apply_named_template(tokenizer, name: str) -> None:
    if name == "tokenizer":
        if not tokenizer.chat_template:
            raise RecipeError("template.chat_template=tokenizer but this tokenizer has no chat template; use chatml")
        return
    tokenizer.chat_template = NAMED_TEMPLATES[name]


def end_of_turn_id(tokenizer) -> int:
    """The token the template puts right after an assistant reply (<|im_end|>, <|eot_id|>, ...)."""
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    tail = rendered[rendered.rindex("pong") + len("pong"):]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail.strip() else []
    return ids[0] if ids else tokenizer.eos_token_id


class Encoder:
    """Turns one normalised example into input_ids and labels (a `datasets.map` function)."""

    def __init__(self, tokenizer, cfg: TemplateConfig, systems: dict[str, SystemPrompt], persona: str | None):
        self.tok = tokenizer
        self.train_on = TrainOn(cfg.train_on)
        self.systems = systems  # source name -> persona | keep
        self.persona = persona
        self.eot = end_of_turn_id(tokenizer)

    def __call__(self, example: dict) -> dict:
        if example["text"]:
            ids = self.tok(example["text"], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            return self.row(ids, list(ids), 0)
        messages = self.with_system(example["source"], example["messages"])
        full = self.tok.apply_chat_template(messages, tokenize=False)
        spans = self.assistant_spans(messages, full, example["source"])
        enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if self.train_on is TrainOn.all:
            labels = list(ids)
        else:
            labels = [t if any(a <= s < b for a, b in spans) else IGNORE for t, (s, _) in zip(ids, enc["offset_mapping"])]
        return self.row(ids, labels, len(spans))

    @staticmethod
    def row(ids: list[int], labels: list[int], n_turns: int) -> dict:
        n_sup = sum(t != IGNORE for t in labels)
        return {"input_ids": ids, "labels": labels, "n_turns": n_turns, "n_tokens": len(ids), "n_supervised": n_sup}

    def with_system(self, source: str, messages: list[dict]) -> list[dict]:
        if self.systems.get(source) is SystemPrompt.persona and self.persona:
            return [{"role": "system", "content": self.persona}] + [m for m in messages if m["role"] != "system"]
        return messages

    def assistant_spans(self, messages: list[dict], full: str, source: str) -> list[tuple[int, int]]:
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            through = self.tok.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (full.startswith(before) and full.startswith(through)):
                raise RecipeError(
                    f"template.chat_template: rendering of source {source!r} is not prefix-stable "
                    "(the template rewrites earlier turns); use template.train_on=all or chat_template=chatml"
                )
            # through ends "...reply<|im_end|>\n": supervise up to and including the end-of-turn token
            spans.append((len(before), len(through.rstrip())))
        return spans


def preflight(dataset, eot_id: int, train_on: TrainOn, source: str) -> None:
    """Fail before training if an example has nothing to learn or its end-of-turn is masked."""
    for i, ex in enumerate(dataset):
        supervised = [t for t in ex["labels"] if t != IGNORE]
        if not supervised:
            raise RecipeError(f"data.sources.{source}: example {i} has no supervised tokens after templating")
        if train_on is TrainOn.assistant and ex["n_turns"] and supervised.count(eot_id) < ex["n_turns"]:
            raise RecipeError(
                f"data.sources.{source}: example {i} has {ex['n_turns']} assistant turn(s) but the end-of-turn "
                f"token (id {eot_id}) is masked in some; the model would never learn to stop"
            )
