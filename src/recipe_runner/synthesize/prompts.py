"""The generator's prompts: the templates of synth.prompts (conf/synth/prompts/default.yaml) filled
with the bible and a situation.

Templates are data. `{field}` is replaced by plain text from the fields below and nothing is
evaluated: no str.format (whose `{x.__class__}` reaches into objects), no Jinja. A field a
template names that does not exist is a config error before anything is generated.
"""

from __future__ import annotations

import hashlib
import json
import re

import yaml

from recipe_runner.data.bible import Bible
from recipe_runner.synthesize.situations import Situation

FIELD = re.compile(r"\{(\w+)\}")
BIBLE_FIELDS = ("name", "role", "bible", "system_prompt", "max_sentences")
SITUATION_FIELDS = ("topic", "mood", "register", "language", "turns", "bait")
FIELDS = {  # template -> the fields it may use
    "synopsis": BIBLE_FIELDS + SITUATION_FIELDS,
    "user_turn": BIBLE_FIELDS + SITUATION_FIELDS + ("synopsis", "chat"),
    "persona_turn": BIBLE_FIELDS + SITUATION_FIELDS + ("synopsis",),
    "transcript": BIBLE_FIELDS + SITUATION_FIELDS + ("synopsis",),
    "bait": BIBLE_FIELDS + ("taboo",),
}
NOTHING_YET = "(nothing yet: write the first message)"  # {chat} before the user's first message
LANGUAGE_NAMES = {"en": "English", "ru": "Russian", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
                  "pt": "Portuguese", "nl": "Dutch", "pl": "Polish", "uk": "Ukrainian", "zh": "Chinese",
                  "ja": "Japanese", "ko": "Korean", "tr": "Turkish", "ar": "Arabic", "hi": "Hindi"}


def fields_of(template: str) -> list[str]:
    return FIELD.findall(template)


def fill(template: str, values: dict[str, str]) -> str:
    return FIELD.sub(lambda m: values[m.group(1)], template)


def template_problems(prompts) -> list[str]:
    """Fields a template names that it cannot have (validate.py reports them before any model loads)."""
    out = []
    for name, allowed in FIELDS.items():
        unknown = sorted({f for f in fields_of(prompts[name]) if f not in allowed})
        if unknown:
            out.append(f"synth.prompts.{name} uses {{{'}, {'.join(unknown)}}}, which it cannot have; "
                       f"its fields: {', '.join(allowed)}")
    return out


class Prompts:
    """Messages for each request of a synthesis, from the templates, the bible and a situation."""

    def __init__(self, prompts, bible: Bible, system_prompt: str | None):
        self.templates = {name: str(prompts[name]) for name in FIELDS}
        self.base = {
            "name": bible.name,
            "role": bible.role,
            "bible": yaml.safe_dump(bible.as_dict(), allow_unicode=True, sort_keys=False, width=1000).strip(),
            "system_prompt": system_prompt or bible.fallback_prompt,
            "max_sentences": str(bible.max_sentences if bible.max_sentences is not None else 3),
        }

    def sha(self) -> str:
        """Of the templates and the bible text they are filled with: provenance of every record."""
        text = json.dumps([self.templates, self.base], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def values(self, sit: Situation, synopsis: str = "") -> dict[str, str]:
        bait = fill(self.templates["bait"], {**self.base, "taboo": sit.bait}) if sit.bait else ""
        return {**self.base, "topic": sit.topic, "mood": sit.mood, "register": sit.register,
                "language": LANGUAGE_NAMES.get(sit.language, sit.language), "turns": "", "bait": bait,
                "synopsis": synopsis}

    def synopsis(self, sit: Situation) -> list[dict]:
        return [{"role": "user", "content": fill(self.templates["synopsis"], self.values(sit))}]

    def user_turn(self, sit: Situation, synopsis: str, said: list[str]) -> list[dict]:
        """The simulated user's next message: one request that shows the chat so far as {chat} lines
        (a small model asked to play the user inside a chat with swapped roles answers as the assistant)."""
        speakers = ("User", self.base["name"])
        chat = "\n".join(f"{speakers[i % 2]}: {t}" for i, t in enumerate(said)) or NOTHING_YET
        return [{"role": "user", "content": fill(self.templates["user_turn"], {**self.values(sit, synopsis), "chat": chat})}]

    def persona_turn(self, sit: Situation, synopsis: str, said: list[str]) -> list[dict]:
        system = fill(self.templates["persona_turn"], self.values(sit, synopsis))
        history = [{"role": "assistant" if i % 2 else "user", "content": t} for i, t in enumerate(said)]
        return [{"role": "system", "content": system}, *history]

    def transcript(self, sit: Situation, synopsis: str, turns: int) -> list[dict]:
        values = {**self.values(sit, synopsis), "turns": str(turns)}
        return [{"role": "user", "content": fill(self.templates["transcript"], values)}]
