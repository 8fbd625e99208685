"""The persona bible: the YAML file that describes the character, read and checked in one place.

`load_bible(path)` parses the file once per process (cached by path and modification time) and
checks it: a mapping with a `name`, the fields the code reads of the types it reads them as, every
`taboo_patterns` regex compiled. Everything the rest of the code needs from a bible is here:

- `system_prompt(template)`: the training system prompt, template.persona.system_prompt (a
  format string over the bible's fields, lists joined with "; ");
- `whole_prompt`: the whole bible as a system prompt, the prompt-only baseline's;
- `fallback_prompt`: "You are {name}. {role}" (FALLBACK_PROMPT), when nothing else is set;
- `markers`, `taboo_patterns`, `max_sentences`, `languages`: what the persona score checks;
- `wording`: the persona's own phrases, which the parroting check must not count;
- `as_dict()`: the file's mapping as written (for the adapter card, the judge, the generator).

Fields the code reads (all optional but `name`):

    name, role                      text
    speech_patterns, values, taboos, knowledge, markers, taboo_patterns
                                    lists of texts
    max_sentences                   a whole number
    language                        an ISO 639-1 code or a list of them

Any other field is free (a system prompt template may name it). This module sits at the bottom
(data/): it imports nothing from evaluate/, synthesize/, train/, report/ or use/.
"""

from __future__ import annotations

import copy
import re
import string
from pathlib import Path

import yaml

from recipe_runner.errors import RecipeError

# The persona prompt when no other is given. config/schema.py's default for
# template.persona.system_prompt is the same text, written out there for the user to read.
FALLBACK_PROMPT = "You are {name}. {role}"

TEXT_FIELDS = ("name", "role")
LIST_FIELDS = ("speech_patterns", "values", "taboos", "knowledge", "markers", "taboo_patterns")
# the whole-bible prompt: these fields, in this order, each as "<label>: a; b; c."
WHOLE_PROMPT_SECTIONS = (("speech_patterns", "How you speak"), ("values", "What you value"),
                         ("taboos", "Never"), ("knowledge", "What you know"))
# fields that name what the character must NOT say: not its own wording (their phrases are the
# parroting to catch: a model that says the taboo "Thanks for the question" 80% of the time)
NOT_PERSONA = frozenset({"taboos", "taboo_patterns"})

_SCALARS = (str, int, float)


def _is_scalar(value) -> bool:
    return isinstance(value, _SCALARS) and not isinstance(value, bool)


def _kind(value) -> str:
    return "nothing" if value is None else type(value).__name__


class Bible:
    """A checked bible. Shared (cached) between callers: read it, never change it."""

    def __init__(self, fields, where: str = "bible", source: str | None = None):
        """`fields`: the parsed mapping. `where` starts every load error ("template.persona.bible:
        data/alex/bible.yaml"); `source` names the bible in the system prompt error (the path)."""
        if not isinstance(fields, dict) or "name" not in fields:
            raise RecipeError(f"{where} must be a mapping with at least `name`")
        self.source = source if source is not None else where
        self._fields = fields
        for key in TEXT_FIELDS:
            if key in fields and not _is_scalar(fields[key]):
                raise RecipeError(f"{where}: `{key}` must be text, got {_kind(fields[key])}")
        for key in LIST_FIELDS:
            value = fields.get(key)
            if value is not None and not isinstance(value, list):
                raise RecipeError(f"{where}: `{key}` must be a list, got {_kind(value)}")
            bad = next((i for i, item in enumerate(value or []) if not _is_scalar(item)), None)
            if bad is not None:
                raise RecipeError(f"{where}: `{key}[{bad}]` must be text, got {_kind(value[bad])}")
        max_sentences = fields.get("max_sentences")
        if max_sentences is not None and (not isinstance(max_sentences, int) or isinstance(max_sentences, bool)):
            raise RecipeError(f"{where}: `max_sentences` must be a whole number, got {_kind(max_sentences)}")
        lang = fields.get("language")
        if lang is not None and not isinstance(lang, str) and not (
                isinstance(lang, list) and all(isinstance(x, str) for x in lang)):
            raise RecipeError(f"{where}: `language` must be a language code or a list of them, got {_kind(lang)}")

        self.name: str = str(fields["name"])
        self.role: str = str(fields.get("role", ""))
        self.speech_patterns, self.values, self.taboos, self.knowledge = (
            tuple(str(x) for x in fields.get(key) or []) for key in ("speech_patterns", "values", "taboos", "knowledge"))
        # lower-cased, whitespace runs as one space; an empty marker is dropped
        self.markers: tuple[str, ...] = tuple(
            m for m in (" ".join(str(x).lower().split()) for x in fields.get("markers") or []) if m)
        taboos = []
        for i, p in enumerate(fields.get("taboo_patterns") or []):
            try:
                taboos.append(re.compile(str(p)))
            except re.error as exc:
                raise RecipeError(f"bible taboo_patterns[{i}] {p!r} is not a valid regex: {exc}") from None
        self.taboo_patterns: tuple[re.Pattern, ...] = tuple(taboos)
        self.max_sentences: int | None = max_sentences
        # in the bible's order (the synthesis draws from it); empty = the bible names no language
        self.languages: tuple[str, ...] = ((lang,) if isinstance(lang, str) else tuple(lang)) if lang else ()

    @classmethod
    def from_mapping(cls, fields, where: str = "bible") -> Bible:
        """A bible that is not a file of its own (an adapter card's copy, a test's)."""
        return cls(fields, where)

    def as_dict(self) -> dict:
        """The mapping as written in the file (a copy: the bible itself is shared)."""
        return copy.deepcopy(self._fields)

    # ------------------------------------------------------------------ prompts

    def system_prompt(self, template: str) -> str:
        """The bible through a format string (template.persona.system_prompt): each field as text,
        lists joined with "; ", whitespace runs as one space. A field the bible lacks is an error."""
        fields = {k: "; ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in self._fields.items()}
        wanted = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        missing = [f for f in wanted if f not in fields]
        if missing:
            raise RecipeError(
                f"template.persona.system_prompt uses {missing} but {self.source} has only {sorted(fields)}"
            )
        return " ".join(template.format(**fields).split())

    @property
    def fallback_prompt(self) -> str:
        """FALLBACK_PROMPT filled in: "You are Alex. Cynical 35-year-old IT architect ..." """
        return FALLBACK_PROMPT.format(name=self.name, role=self.role).strip()

    @property
    def whole_prompt(self) -> str:
        """The whole bible as a system prompt: the strongest prompt-only competitor to a fine-tune."""
        parts = [self.fallback_prompt]
        for key, label in WHOLE_PROMPT_SECTIONS:
            items = getattr(self, key)
            if items:
                parts.append(f"{label}: " + "; ".join(items) + ".")
        return " ".join(" ".join(parts).split())

    @property
    def wording(self) -> list[str]:
        """The bible's own wording, one text per item, taboos left out: what the parroting check
        (evaluate/parroting.py mine_ngrams) must not call parroting."""
        texts = []
        for key, value in self._fields.items():
            if key in NOT_PERSONA:
                continue
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    texts.append(item)
        return texts


_LOADED: dict[tuple, Bible] = {}


def load_bible(path: str | None) -> Bible | None:
    """The bible at `path` (template.persona.bible), checked; None when no bible is set.

    Parsed once per process: later calls with the same path get the same object, until the file
    changes (its modification time or size)."""
    if not path:
        return None
    p = Path(path)
    where = f"template.persona.bible: {p}"
    if not p.exists():
        raise RecipeError(f"{where} does not exist")
    stat = p.stat()
    key = (str(path), str(p.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        try:
            fields = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RecipeError(f"{where} is not valid YAML: {exc}") from None
        _LOADED[key] = Bible(fields, where, source=str(path))
    return _LOADED[key]


def persona_prompt(template_cfg) -> str | None:
    """The training system prompt of a recipe's `template` block; None without a bible."""
    bible = load_bible(template_cfg.persona.bible)
    return bible.system_prompt(template_cfg.persona.system_prompt) if bible else None
