"""The persona bible (data/bible.py): loaded and checked once, rendered the same everywhere."""

from __future__ import annotations

import ast
import os
import string
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import REPO
from recipe_runner.config.schema import PersonaConfig
from recipe_runner.data import bible as bible_module
from recipe_runner.data.bible import FALLBACK_PROMPT, Bible, load_bible, persona_prompt
from recipe_runner.errors import RecipeError

SHIPPED = sorted(REPO.glob("data/*/bible.yaml"))


# ------------------------------------------------------------ the code the Bible replaced, as it was


def old_render(bible: dict, path: str, system_prompt: str) -> str:
    """data/templates.py render_persona before the Bible."""
    fields = {k: "; ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in bible.items()}
    wanted = [f for _, f, _, _ in string.Formatter().parse(system_prompt) if f]
    missing = [f for f in wanted if f not in fields]
    if missing:
        raise RecipeError(f"template.persona.system_prompt uses {missing} but {path} has only {sorted(fields)}")
    return " ".join(system_prompt.format(**fields).split())


def old_whole_prompt(bible: dict) -> str:
    """evaluate/checker.py bible_prompt before the Bible."""
    parts = [f"You are {bible['name']}. {bible.get('role', '')}"]
    for key, label in (("speech_patterns", "How you speak"), ("values", "What you value"),
                       ("taboos", "Never"), ("knowledge", "What you know")):
        if bible.get(key):
            parts.append(f"{label}: " + "; ".join(map(str, bible[key])) + ".")
    return " ".join(" ".join(parts).split())


def recipe_system_prompts() -> dict[str, str]:
    out = {"schema default": PersonaConfig().system_prompt}
    for recipe in sorted(REPO.glob("recipes/*.yaml")):
        persona = (yaml.safe_load(recipe.read_text()).get("template") or {}).get("persona") or {}
        if persona.get("system_prompt"):
            out[recipe.name] = persona["system_prompt"]
    return out


# ------------------------------------------------------------ the shipped bibles


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_bibles_render_as_before(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    bible = load_bible(str(path))
    assert bible.name == raw["name"] and bible.as_dict() == raw
    prompts = recipe_system_prompts()
    assert len(prompts) > 1  # the recipes' own templates, not only the default
    for system_prompt in prompts.values():
        assert bible.system_prompt(system_prompt) == old_render(raw, str(path), system_prompt)
    assert bible.whole_prompt == old_whole_prompt(raw)
    assert bible.fallback_prompt == f"You are {raw['name']}. {raw.get('role', '')}".strip()
    assert bible.markers == tuple(" ".join(m.lower().split()) for m in raw["markers"])
    assert [p.pattern for p in bible.taboo_patterns] == raw["taboo_patterns"]
    assert bible.max_sentences == raw["max_sentences"] and bible.languages == (raw["language"],)


def test_the_alex_prompts_pinned():
    alex = load_bible(str(REPO / "data/alex/bible.yaml"))
    role = ("Cynical 35-year-old IT architect who has seen every hype cycle twice and answers in one or two "
            "blunt sentences.")
    assert alex.system_prompt(FALLBACK_PROMPT) == alex.fallback_prompt == f"You are Alex. {role}"
    assert alex.whole_prompt.startswith(f"You are Alex. {role} How you speak: greets with \"yo\", never with")
    assert alex.whole_prompt.endswith("with kitchen-table analogies.")


def test_the_fallback_is_the_schema_default():
    assert FALLBACK_PROMPT == PersonaConfig().system_prompt == "You are {name}. {role}"
    assert Bible.from_mapping({"name": "Bo"}).fallback_prompt == "You are Bo."
    assert Bible.from_mapping({"name": "Bo", "role": "A  baker."}).fallback_prompt == "You are Bo. A  baker."
    assert Bible.from_mapping({"name": "Bo", "taboos": ["swearing"]}).whole_prompt == "You are Bo. Never: swearing."


# ------------------------------------------------------------ loading and its errors


def write(tmp_path: Path, text: str, name: str = "bible.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_no_bible_is_none():
    assert load_bible(None) is None and load_bible("") is None
    template = OmegaConf.create({"persona": {"bible": None, "system_prompt": FALLBACK_PROMPT}})
    assert persona_prompt(template) is None


def test_persona_prompt_renders_the_recipes_template(tmp_path):
    path = write(tmp_path, "name: Bo\nrole: A baker.\nvalues: [bread, butter]\n")
    template = OmegaConf.create({"persona": {"bible": path, "system_prompt": "{name}:  {values}\n{role}"}})
    assert persona_prompt(template) == "Bo: bread; butter A baker."


@pytest.mark.parametrize("text, message", [
    ("name: [unclosed", "is not valid YAML"),
    ("- just\n- a list\n", "must be a mapping with at least `name`"),
    ("role: nobody\n", "must be a mapping with at least `name`"),
    ("", "must be a mapping with at least `name`"),
])
def test_load_errors_name_the_file(tmp_path, text, message):
    assert_refused(tmp_path, text, f" {message}")


def test_a_missing_file(tmp_path):
    with pytest.raises(RecipeError, match=r"^template\.persona\.bible: .*nope\.yaml does not exist$"):
        load_bible(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("text, message", [
    ("name: [Bo]", "`name` must be text, got list"),
    ("name: yes", "`name` must be text, got bool"),
    ("name: Bo\nrole:\n", "`role` must be text, got nothing"),
    ("name: Bo\nmarkers: yo", "`markers` must be a list, got str"),
    ("name: Bo\ntaboos: {a: 1}", "`taboos` must be a list, got dict"),
    ("name: Bo\nvalues: [ok, [nested]]", "`values[1]` must be text, got list"),
    ("name: Bo\nmax_sentences: three", "`max_sentences` must be a whole number, got str"),
    ("name: Bo\nmax_sentences: 2.5", "`max_sentences` must be a whole number, got float"),
    ("name: Bo\nlanguage: 7", "`language` must be a language code or a list of them, got int"),
])
def test_field_types_are_checked_with_the_file_name(tmp_path, text, message):
    assert_refused(tmp_path, text, f": {message}", exact=True)


def assert_refused(tmp_path, text: str, message: str, exact: bool = False) -> None:
    """The bible `text` is refused with an error that starts with its key and file."""
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as exc:
        load_bible(path)
    said, where = str(exc.value), f"template.persona.bible: {path}"
    assert said == where + message if exact else (said.startswith(where + " ") and message.strip() in said), said


def test_a_bad_taboo_regex_is_reported_as_before(tmp_path):
    path = write(tmp_path, "name: Bo\ntaboo_patterns: ['ok', '(unclosed']\n")
    with pytest.raises(RecipeError) as exc:
        load_bible(path)
    assert str(exc.value) == ("bible taboo_patterns[1] '(unclosed' is not a valid regex: "
                              "missing ), unterminated subpattern at position 0")


def test_a_field_the_template_names_must_exist(tmp_path):
    path = write(tmp_path, "name: Bo\nrole: A baker.\n")
    with pytest.raises(RecipeError) as exc:
        load_bible(path).system_prompt("You are {name}. {motto} {tone}")
    assert str(exc.value) == (f"template.persona.system_prompt uses ['motto', 'tone'] but {path} "
                              "has only ['name', 'role']")


def test_optional_fields_may_be_missing_or_empty():
    bo = Bible.from_mapping({"name": "Bo", "markers": None, "language": None, "max_sentences": None})
    assert bo.role == "" and bo.markers == () and bo.taboo_patterns == () and bo.languages == ()
    assert bo.max_sentences is None and bo.knowledge == () and bo.values == () and bo.taboos == ()
    assert Bible.from_mapping({"name": 7}).name == "7"
    assert Bible.from_mapping({"name": "Bo", "language": ["en", "de"]}).languages == ("en", "de")


def test_markers_are_normalised_and_empty_ones_dropped():
    bo = Bible.from_mapping({"name": "Bo", "markers": ["  Works  on\nMy Machine ", "", "   ", "YO", 42]})
    assert bo.markers == ("works on my machine", "yo", "42")


def test_wording_is_the_persona_s_own_not_its_taboos():
    bo = Bible.from_mapping({"name": "Bo", "role": "A baker.", "markers": ["fresh bread"], "max_sentences": 2,
                             "taboos": ["Thanks for the question"], "taboo_patterns": ["(?i)thanks"]})
    assert bo.wording == ["Bo", "A baker.", "fresh bread"]


# ------------------------------------------------------------ once per process


def test_loaded_once_until_the_file_changes(tmp_path, monkeypatch):
    path = write(tmp_path, "name: Bo\n")
    parsed = []
    real = yaml.safe_load
    monkeypatch.setattr(bible_module.yaml, "safe_load", lambda text: parsed.append(1) or real(text))
    first = load_bible(path)
    assert load_bible(path) is first and len(parsed) == 1
    Path(path).write_text("name: Bob\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    assert load_bible(path).name == "Bob" and len(parsed) == 2


def test_the_shared_bible_cannot_be_changed_through_as_dict(tmp_path):
    bible = load_bible(write(tmp_path, "name: Bo\nvalues: [bread]\n"))
    bible.as_dict()["values"].append("cake")
    assert bible.as_dict() == {"name": "Bo", "values": ["bread"]} and bible.values == ("bread",)


def test_bible_sits_at_the_bottom():
    """data/bible.py imports nothing from the packages above data/."""
    tree = ast.parse((REPO / "src/recipe_runner/data/bible.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    above = ("evaluate", "synthesize", "use", "train", "report", "model")
    assert not [m for m in modules if m.startswith("recipe_runner.") and m.split(".")[1] in above]
