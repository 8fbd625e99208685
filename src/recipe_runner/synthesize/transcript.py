"""From a generator's text to chat turns: one turn cleaned, or a whole transcript parsed.

Generators decorate: a turn comes back as `Rook: "Arr, aye."` or `**User:** hi`. A leading
speaker label and wrapping quotes are stripped (that is formatting, not content). A label in
the middle of a turn means the generator went on to write the other side too; that turn is not
cut and kept, it is reported (`speaker_label`), because the persona never said those lines.
"""

from __future__ import annotations

import re

from recipe_runner.evaluate.persona_score import _BOUNDARY, _is_abbreviation

QUOTES = "\"'\u201c\u201d\u2018\u2019"


def _label(names: list[str]) -> re.Pattern:
    """`User:`, `**Rook**:`, `Captain Rook:` ... at the start of a line (case-insensitive)."""
    alts = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    return re.compile(rf"^[ \t>*_#-]*(?:{alts})[ \t*_]*:[ \t*_]*", re.IGNORECASE | re.MULTILINE)


def speaker_names(persona: str) -> list[str]:
    """Labels a generator uses: User/You for the user; the name, its first and last word for the persona."""
    words = persona.split()
    return ["user", "you", "assistant", persona, words[0], words[-1]]


def clean_turn(text: str, names: list[str]) -> tuple[str, str | None]:
    """(cleaned turn, problem or None)."""
    label = _label(names)
    text = label.sub("", text.strip(), count=1).strip() if label.match(text.strip()) else text.strip()
    if len(text) >= 2 and text[0] in QUOTES and text[-1] in QUOTES:
        text = text[1:-1].strip()
    inner = label.search(text)
    if inner:
        return text, f"speaker_label: the turn goes on as {inner.group().strip()!r}"
    return text, None


def parse_transcript(text: str, persona: str) -> tuple[list[dict], str | None]:
    """`User: ...` / `<persona>: ...` lines -> messages; a line without a label continues the turn
    before it. (messages, problem or None): text before the first label is ignored (a preamble)."""
    user = _label(["user", "you"])
    persona_label = _label([persona, persona.split()[0], persona.split()[-1], "assistant"])
    messages: list[dict] = []
    for line in text.splitlines():
        for role, label in (("user", user), ("assistant", persona_label)):
            m = label.match(line)
            if m:
                messages.append({"role": role, "content": line[m.end():].strip()})
                break
        else:
            if messages and line.strip():
                messages[-1]["content"] = (messages[-1]["content"] + "\n" + line.strip()).strip()
    if not messages:
        return [], f"malformed: no line starts with 'User:' or '{persona}:'"
    for m in messages:
        if len(m["content"]) >= 2 and m["content"][0] in QUOTES and m["content"][-1] in QUOTES:
            m["content"] = m["content"][1:-1].strip()
    return messages, None


def first_sentences(text: str, k: int) -> str | None:
    """The first k complete sentences of a reply cut off at its token cap, or None when not even
    one sentence was finished ("Arr! Arr! Arr! ..." cut mid-word gives its first k "Arr!")."""
    ends = [m.end() for m in _BOUNDARY.finditer(text) if not (m.group() == "." and _is_abbreviation(text, m.start()))]
    return text[: ends[k - 1] if len(ends) >= k else ends[-1]].strip() if ends else None
