"""The fast first line: shared files scanned as text, with file, line and key, before Hydra runs.

A recipe (recipes/*.yaml, or a path) and a sweep file (conf/sweep/*.yaml) are files people send
each other. One is refused when it
- is too big, or expands (through YAML aliases) past a bound (shared_yaml.py);
- names code: `_target_`, `_partial_`, `trust_remote_code`;
- calls a resolver other than the pure ones (interpolations.py, OmegaConf's own grammar);
- sets a user setting (user_settings.py) or any `hydra.*` key (a sweep file: `hydra.sweeper.params`
  only, and no user setting among the swept keys);
- points a folder it writes (`synth.out`) outside the working directory;
- has a defaults entry that is not a plain name of another file of its own kind, or a choice in
  the groups a recipe may choose (`/model`, `/logger`): no `/`, `..`, `@`, `${`, unknown groups,
  so Hydra never loads a file from outside recipes/ (or conf/sweep/) on a shared file's say.
Where its keys land comes from Hydra's own header parser. Files a recipe builds on and recipes a
sweep file sweeps over are scanned too. The scan also records where each key is set, so the
composed check (composed_check.py: the one that cannot be talked around) names file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from recipe_runner.errors import RecipeError
from recipe_runner.config.interpolations import resolver_problem
from recipe_runner.config.shared_yaml import package_prefix, read_shared_yaml
from recipe_runner.config.user_settings import USER_SETTINGS, holds_user_setting, user_setting

FORBIDDEN = {
    "_target_": "recipes are data: recipe-runner never instantiates classes named in a recipe",
    "_partial_": "recipes are data: recipe-runner never instantiates classes named in a recipe",
    "trust_remote_code": "a shared recipe cannot make this process run code from a model repository",
}
SWEEP_PARAMS = "hydra.sweeper.params"
WRITTEN_PATHS = ("synth.out",)  # folders a run writes into that a recipe may name
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a file name in a group: no /, no leading dot
CHOOSABLE_GROUPS = {"recipe": ("/model", "/logger"), "sweep": (), "search": ()}  # groups a shared file's defaults may choose
FOLDERS = {"sweep": "sweep", "search": "hparams_search"}  # conf/<folder>: where each kind of swept file lives
# what a search file (conf/hparams_search) sets besides hydra.sweeper.params: names and numbers the
# sweeper's schema checks (samplers and pruners by name, never a class); n_jobs is the user's machine's
SEARCH_SETTINGS = ("n_trials", "sampler", "seed", "objectives", "pruner")
USER_RULE = ("is a user setting ({why}): a shared file cannot set it; set it on the command line or in your own "
             "~/.config/recipe-runner/user.yaml")


def plain_name(text: str) -> bool:
    return bool(PLAIN_NAME.fullmatch(text)) and ".." not in text


class SharedFileScan:
    """Walks shared files' YAML nodes with their key paths; `kind` is recipe or sweep.
    `locations` maps each key path set to `file:line` (the first file that sets it)."""

    def __init__(self, recipes: Path, sweeps: Path, conf: Path):
        self.recipes, self.sweeps, self.conf = recipes, sweeps, conf
        self.seen: set[Path] = set()
        self.locations: dict[str, str] = {}

    def scan(self, path: Path, kind: str) -> None:
        path = path.resolve()
        if path in self.seen:
            return
        self.seen.add(path)
        shared = read_shared_yaml(path)
        outer = getattr(self, "path", None), getattr(self, "kind", None)
        self.path, self.kind = path, kind
        try:
            self.scan_root(shared, kind)
        finally:
            self.path, self.kind = outer

    def scan_root(self, shared, kind: str) -> None:
        root = shared.root
        if root is None:
            return
        if not isinstance(root, yaml.MappingNode):
            self.refuse(root, "", f"a {kind} file is a mapping of keys")
        prefix = package_prefix(shared.package, kind)
        nested = []
        for key, value in root.value:
            if key.value == "defaults":  # Hydra's defaults list sits at the top whatever the package
                nested += self.defaults(value)
            else:
                self.walk(value, [*prefix, str(key.value)], key)
        for nested_path, nested_kind in nested:  # after this file, so messages name the file that holds the key
            self.scan(nested_path, nested_kind)

    def where(self, node: yaml.Node) -> str:
        return f"{self.path}:{node.start_mark.line + 1}"

    def refuse(self, node: yaml.Node, dotted: str, why: str):
        where = f" `{dotted}`" if dotted else ""
        raise RecipeError(f"{self.where(node)}:{where} {why}")

    def walk(self, node: yaml.Node, parts: list[str], key_node: yaml.Node | None) -> None:
        dotted = ".".join(parts)
        if key_node is not None:
            self.check_key(key_node, dotted, node)
            self.locations.setdefault(dotted, self.where(key_node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.tag.endswith(":merge") or key.value == "<<":  # a YAML merge key adds its keys here
                    self.walk(value, parts, key)
                else:
                    self.walk(value, [*parts, str(key.value)], key)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:  # the key above was checked: a list under a user setting is refused there
                self.walk(item, parts, None)
        else:
            self.check_value(node, dotted, node.value)
            if dotted in WRITTEN_PATHS:
                self.check_written_path(node, dotted)

    def check_key(self, key: yaml.Node, dotted: str, value: yaml.Node) -> None:
        name = str(key.value)
        if name in FORBIDDEN:
            self.refuse(key, name, f"is not allowed: {FORBIDDEN[name]}")
        if "${" in name:
            self.refuse(key, dotted, "is not allowed: a key is a plain name, not an interpolation")
        if self.kind in FOLDERS:
            self.check_sweep_key(key, dotted, value)
            return
        if dotted == "hydra" or dotted.startswith("hydra."):
            self.refuse(key, dotted, "is not allowed in a recipe: hydra.* settings (environment variables, "
                                     "launcher, output folders, callbacks) are the user's, set on the command line")
        setting = user_setting(dotted)
        if setting:
            self.refuse(key, dotted, USER_RULE.format(why=USER_SETTINGS[setting]))
        if holds_user_setting(dotted) and not isinstance(value, yaml.MappingNode):
            self.refuse(key, dotted, "holds user settings: a recipe may set only its other keys, one by one")

    def check_sweep_key(self, key: yaml.Node, dotted: str, value: yaml.Node) -> None:
        parts, params = dotted.split("."), SWEEP_PARAMS.split(".")
        allowed = SWEEP_PARAMS if self.kind == "sweep" else \
            f"{SWEEP_PARAMS} and hydra.sweeper.{{{','.join(SEARCH_SETTINGS)}}}"
        if parts == params[: len(parts)]:  # hydra, hydra.sweeper, hydra.sweeper.params
            if not isinstance(value, yaml.MappingNode):
                self.refuse(key, dotted, f"is not allowed: a {self.kind} file sets {allowed} only")
            return
        if self.kind == "search" and len(parts) == 3 and parts[:2] == params[:2] and parts[2] in SEARCH_SETTINGS:
            return  # a name or a number, checked by the sweeper's schema when Hydra composes
        if parts[: len(params)] != params:
            self.refuse(key, dotted, f"is not allowed: a {self.kind} file sets {allowed} only")
        problem = swept_key_problem(".".join(parts[len(params):]))
        if problem:
            self.refuse(key, dotted, problem)
        swept = ".".join(parts[len(params):]).lstrip("+~")
        if swept == "recipe" and isinstance(value, yaml.ScalarNode):
            for p in self.swept_recipes(key, str(value.value)):
                self.scan(p, "recipe")

    def swept_recipes(self, key: yaml.Node, text: str) -> list[Path]:
        try:
            return swept_recipe_files(self.recipes, sweep_values("recipe", text))
        except ValueError as exc:
            self.refuse(key, "recipe", str(exc))

    def check_written_path(self, node: yaml.Node, dotted: str) -> None:
        """A folder the run writes into stays under the working directory when a shared file names it."""
        problem = written_path_problem(str(node.value))
        if problem:
            self.refuse(node, dotted, problem)

    def check_value(self, node: yaml.Node, dotted: str, text) -> None:
        problem = resolver_problem(str(text))
        if problem:
            self.refuse(node, dotted, problem)

    def defaults(self, node: yaml.Node) -> list[tuple[Path, str]]:
        """A defaults list's entries: other files of this kind (plain names) to scan next, or a choice
        in a group this kind may choose; anything Hydra would resolve to another place is refused."""
        if not isinstance(node, yaml.SequenceNode):
            self.refuse(node, "defaults", "must be a list")
        own = self.recipes if self.kind == "recipe" else self.sweeps if self.kind == "sweep" else \
            self.conf / FOLDERS[self.kind]
        nested = []
        for entry in node.value:
            if isinstance(entry, yaml.ScalarNode):
                name = str(entry.value).strip()
                if name == "_self_":
                    continue
                if not plain_name(name):
                    self.refuse(entry, "defaults", f"entry `{name}` is not a plain {self.kind} name: a shared file "
                                                   f"builds only on other files in {own} (no /, .., @, ${{}})")
                if not (own / f"{name}.yaml").is_file():
                    self.refuse(entry, "defaults", f"entry `{name}`: no {own / (name + '.yaml')}")
                nested.append((own / f"{name}.yaml", self.kind))
            elif isinstance(entry, yaml.MappingNode) and len(entry.value) == 1 and \
                    isinstance(entry.value[0][1], yaml.ScalarNode):
                key, value = entry.value[0]
                group = re.sub(r"^(override|optional)\s+", "", str(key.value).strip())
                option = str(value.value).strip()
                if group not in CHOOSABLE_GROUPS[self.kind]:
                    allowed = ", ".join(f"`{g}`" for g in CHOOSABLE_GROUPS[self.kind]) or "none"
                    self.refuse(entry, "defaults", f"may not choose `{group}`: a shared {self.kind} chooses only "
                                                   f"in the groups {allowed} (hydra/*, paths and the rest are the "
                                                   f"user's choice)")
                if value.tag.endswith(":null") or option in ("null", "~", ""):
                    continue
                if not plain_name(option) or not (self.conf / group.strip("/") / f"{option}.yaml").is_file():
                    self.refuse(entry, "defaults", f"`{group}: {option}`: not an option in "
                                                   f"{self.conf / group.strip('/')} (plain names only)")
            else:
                self.refuse(entry, "defaults", "entries are a plain name or `override /group: option`")
        return nested


def swept_key_problem(swept: str) -> str | None:
    """Why a sweep file may not sweep the key `swept` (its form in hydra.sweeper.params), or None."""
    bare = swept.lstrip("+~")
    if "@" in bare or "${" in bare:
        return "is not allowed: a swept key is a plain config key (no @package, no interpolation)"
    if bare == "hydra" or bare.startswith(("hydra.", "hydra/")):
        return "is not allowed: a sweep cannot change hydra.* settings (the user's, set on the command line)"
    setting = user_setting(bare)
    if setting or holds_user_setting(bare):
        return USER_RULE.format(why=USER_SETTINGS.get(setting, "it holds user settings"))
    if bare in WRITTEN_PATHS:
        return "is not allowed: a sweep cannot move the folders a run writes into"
    if "/" in bare and bare not in ("model", "logger"):
        return "is not allowed: a sweep file chooses in no config group but recipe, model and logger"
    return None


def sweep_values(key: str, value: str) -> list[str]:
    """The values Hydra's sweep syntax `value` stands for (a,b | choice(...) | range(...) | glob(...))."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(f"{key}={value}")
    except Exception:
        return [value]
    from hydra.core.override_parser.types import ValueType

    if not override.is_sweep_override():
        return [str(override.value())]
    if override.value_type is ValueType.GLOB_CHOICE_SWEEP or not override.is_discrete_sweep():
        return ["*"]  # a glob over a group's options, an interval: no file names to check
    return [str(v) for v in override.sweep_string_iterator()]


def swept_recipe_files(recipes: Path, values: list[str]) -> list[Path]:
    """The recipe files a swept `recipe` may pick (values from sweep_values; ["*"]: a glob, any);
    each a plain name in recipes/, else ValueError naming it."""
    if values == ["*"]:
        return sorted(recipes.glob("*.yaml"))
    for name in values:
        if not plain_name(name) or not (recipes / f"{name}.yaml").is_file():
            raise ValueError(f"sweeps over `{name}`: not a recipe in {recipes} (a sweep file names recipes by "
                             f"their plain names)")
    return [recipes / f"{name}.yaml" for name in values]


def written_path_problem(text: str) -> str | None:
    if text.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:", text) or ".." in re.split(r"[/\\]", text):
        return ("must be a relative path inside the working directory (no /, ~ or ..): a shared file decides what "
                "is written, you decide where (command line)")
    return None


def scan_shared_files(files: list[tuple[Path, str]], recipes: Path, sweeps: Path, conf: Path) -> dict[str, str]:
    """Refuse recipe and sweep files (and the files they build on) that are not plain data; return
    where each key they set is set (`file:line`)."""
    scan = SharedFileScan(recipes, sweeps, conf)
    for path, kind in files:
        scan.scan(path, kind)
    return scan.locations


def scan_overrides(overrides: list[str]) -> None:
    """The command line is the user's own: it may set user settings, but still never names code."""
    for o in overrides:
        for word in FORBIDDEN:
            if word in o.split("=", 1)[0]:
                raise RecipeError(f"override `{o}`: `{word}` is not allowed: {FORBIDDEN[word]}")
