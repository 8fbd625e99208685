"""Shared recipe and sweep files are data: each is scanned before Hydra reads anything.

A recipe (recipes/*.yaml, or a path) and a sweep file (conf/sweep/*.yaml) are files people send
each other. One is refused, with its file, line and key, when it
- names code: `_target_`, `_partial_`, `trust_remote_code`;
- points a folder it writes (`synth.out`) outside the working directory (absolute, `..`, `~`);
- calls an interpolation resolver other than the pure ones below: `${oc.env:...}` reads the
  environment (a secret in `description` would land in every config file and in W&B),
  `oc.decode` and `oc.create` turn strings back into interpolations;
- sets a user setting (user_settings.py: the judge's endpoint and key variable, W&B mode, entity
  and project, output paths, the synthesis generator) or any `hydra.*` key (`hydra.job.env_set` sets environment
  variables such as WANDB_MODE or WANDB_BASE_URL; the launcher decides where jobs run). A sweep
  file may set `hydra.sweeper.params` and nothing else.
Files a recipe builds on (its defaults list) and recipes a sweep file sweeps over are scanned too.
The project's own conf/ groups are code, not shared data, and may use resolvers (cache paths).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from recipe_runner.errors import RecipeError
from recipe_runner.config.user_settings import USER_SETTINGS, holds_user_setting, user_setting

FORBIDDEN = {
    "_target_": "recipes are data: recipe-runner never instantiates classes named in a recipe",
    "_partial_": "recipes are data: recipe-runner never instantiates classes named in a recipe",
    "trust_remote_code": "a shared recipe cannot make this process run code from a model repository",
}
PURE_RESOLVERS = ("now", "oc.select", "oc.dict.keys", "oc.dict.values")  # read only the config and the clock
RESOLVER = re.compile(r"\$\{\s*([^\s:{}]+)\s*:")  # ${name: ...}; a plain ${a.b} reference has no colon
SWEEP_PARAMS = "hydra.sweeper.params"
WRITTEN_PATHS = ("synth.out",)  # folders a run writes into that a recipe may name
USER_RULE = ("is a user setting ({why}): a shared file cannot set it; set it on the command line or in your own "
             "~/.config/recipe-runner/user.yaml")


class SharedFileScan:
    """Walks one file's YAML nodes with their key paths; `kind` is recipe or sweep."""

    def __init__(self, recipes: Path, sweeps: Path, seen: set[Path]):
        self.recipes, self.sweeps, self.seen = recipes, sweeps, seen

    def scan(self, path: Path, kind: str) -> None:
        path = path.resolve()
        if path in self.seen:
            return
        self.seen.add(path)
        self.path, self.kind = path, kind
        try:
            text = path.read_text(encoding="utf-8")
            root = yaml.compose(text)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from None
        if root is None:
            return
        if not isinstance(root, yaml.MappingNode):
            self.refuse(root, "", f"a {kind} file is a mapping of keys")
        prefix = package_prefix(text, kind)
        nested = []
        for key, value in root.value:
            if key.value == "defaults":  # Hydra's defaults list sits at the top whatever the package
                nested += self.defaults(value)
            else:
                self.walk(value, [*prefix, str(key.value)], key)
        for nested_path, nested_kind in nested:  # after this file, so messages name the file that holds the key
            SharedFileScan(self.recipes, self.sweeps, self.seen).scan(nested_path, nested_kind)

    def refuse(self, node: yaml.Node, dotted: str, why: str):
        where = f" `{dotted}`" if dotted else ""
        raise RecipeError(f"{self.path}:{node.start_mark.line + 1}:{where} {why}")

    def walk(self, node: yaml.Node, parts: list[str], key_node: yaml.Node | None, depth: int = 0) -> None:
        if depth > 64:  # aliases can nest a node inside itself
            self.refuse(node, ".".join(parts), "nests deeper than 64 levels")
        dotted = ".".join(parts)
        if key_node is not None:
            self.check_key(key_node, dotted, node)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.tag.endswith(":merge") or key.value == "<<":  # a YAML merge key adds its keys here
                    self.walk(value, parts, key, depth + 1)
                else:
                    self.walk(value, [*parts, str(key.value)], key, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:  # the key above was checked: a list under a user setting is refused there
                self.walk(item, parts, None, depth + 1)
        else:
            self.check_resolvers(node, dotted, node.value)
            if dotted in WRITTEN_PATHS:
                self.check_written_path(node, dotted)

    def check_key(self, key: yaml.Node, dotted: str, value: yaml.Node) -> None:
        name = str(key.value)
        if name in FORBIDDEN:
            self.refuse(key, name, f"is not allowed: {FORBIDDEN[name]}")
        self.check_resolvers(key, dotted, name)
        if self.kind == "sweep":
            self.check_sweep_key(key, dotted, value)
            return
        if dotted == "hydra" or dotted.startswith("hydra."):
            self.refuse(key, dotted, "is not allowed in a recipe: hydra.* settings (environment variables, "
                                     "launcher, output folders) are the user's, set on the command line")
        setting = user_setting(dotted)
        if setting:
            self.refuse(key, dotted, USER_RULE.format(why=USER_SETTINGS[setting]))
        if holds_user_setting(dotted) and not isinstance(value, yaml.MappingNode):
            self.refuse(key, dotted, "holds user settings: a recipe may set only its other keys, one by one")

    def check_sweep_key(self, key: yaml.Node, dotted: str, value: yaml.Node) -> None:
        parts, params = dotted.split("."), SWEEP_PARAMS.split(".")
        if parts == params[: len(parts)]:  # hydra, hydra.sweeper, hydra.sweeper.params
            if not isinstance(value, yaml.MappingNode):
                self.refuse(key, dotted, f"is not allowed: a sweep file sets {SWEEP_PARAMS} only")
            return
        if parts[: len(params)] != params:
            self.refuse(key, dotted, f"is not allowed: a sweep file sets {SWEEP_PARAMS} only")
        swept = ".".join(parts[len(params):]).lstrip("+~")
        if swept == "hydra" or swept.startswith("hydra.") or swept.startswith("hydra/"):
            self.refuse(key, dotted, "is not allowed: a sweep cannot change hydra.* settings (the user's, set on "
                                     "the command line)")
        setting = user_setting(swept)
        if setting or holds_user_setting(swept):
            self.refuse(key, dotted, USER_RULE.format(why=USER_SETTINGS.get(setting, "it holds user settings")))
        if swept in WRITTEN_PATHS:
            self.refuse(key, dotted, "is not allowed: a sweep cannot move the folders a run writes into")
        if swept == "recipe" and isinstance(value, yaml.ScalarNode):
            text = str(value.value)  # a,b | choice(a,b) | glob(*): every recipe it may pick
            options = self.recipes.glob("*.yaml") if "glob(" in text else \
                (self.recipes / f"{name}.yaml" for name in re.findall(r"[\w.-]+", text))
            for p in options:
                if p.is_file():
                    SharedFileScan(self.recipes, self.sweeps, self.seen).scan(p, "recipe")

    def check_written_path(self, node: yaml.Node, dotted: str) -> None:
        """A folder the run writes into stays under the working directory when a shared file names it."""
        text = str(node.value)
        if text.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:", text) or ".." in re.split(r"[/\\]", text):
            self.refuse(node, dotted, "must be a relative path inside the working directory (no /, ~ or ..): a "
                                      "shared file decides what is written, you decide where (command line)")

    def check_resolvers(self, node: yaml.Node, dotted: str, text) -> None:
        for name in RESOLVER.findall(str(text)):
            if name not in PURE_RESOLVERS:
                self.refuse(node, dotted, f"uses `${{{name}:...}}`: shared files may not call resolvers that read "
                                          f"the environment or files or build new interpolations (allowed: "
                                          f"{', '.join(PURE_RESOLVERS)})")

    def defaults(self, node: yaml.Node) -> list[tuple[Path, str]]:
        """A defaults list's entries: other recipes and sweep files to scan next; hydra/paths groups refused."""
        if not isinstance(node, yaml.SequenceNode):
            self.refuse(node, "defaults", "must be a list")
        nested = []
        for entry in node.value:
            if isinstance(entry, yaml.ScalarNode):
                group, options = ("", [entry.value]) if "/" not in entry.value.strip("/") else (
                    entry.value.strip("/").rsplit("/", 1)[0], [entry.value.rsplit("/", 1)[1]])
            elif isinstance(entry, yaml.MappingNode) and len(entry.value) == 1:
                key, value = entry.value[0]
                group = str(key.value).replace("override ", "").replace("optional ", "").strip().strip("/")
                options = [v.value for v in value.value] if isinstance(value, yaml.SequenceNode) else [value.value]
            else:
                self.refuse(entry, "defaults", "entries are a name or `group: option`")
            if entry.value == "_self_":
                continue
            text = f"{group}:{options}"
            self.check_resolvers(entry, "defaults", text)
            if "@" in text:
                self.refuse(entry, "defaults", "may not relocate a package (`@`): it could move keys into user settings")
            if group.startswith("hydra") or group == "paths":
                self.refuse(entry, "defaults", f"may not choose `{group}`: that group is the user's choice, not a "
                                               f"shared file's")
            folder = {"": self.recipes if self.kind == "recipe" else self.sweeps, "recipe": self.recipes,
                      "sweep": self.sweeps}.get(group)
            if folder is not None:
                for option in options:
                    if option and (folder / f"{option}.yaml").is_file():
                        nested.append((folder / f"{option}.yaml", "recipe" if folder == self.recipes else "sweep"))
        return nested


def package_prefix(text: str, kind: str) -> list[str]:
    """Where the file's keys land: `# @package _global_` -> the root; no header -> under the group name."""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s*@package\s+(\S+)", line)
        if match:
            package = match.group(1)
            if package == "_global_":
                return []
            if package.startswith("_global_."):
                return package[len("_global_."):].split(".")
            return package.replace("_group_", kind).split(".")
    return [kind]


def scan_shared_file(path: Path, kind: str, recipes: Path, sweeps: Path) -> None:
    """Refuse a recipe or sweep file (and the recipes it builds on) that is not plain data."""
    SharedFileScan(recipes, sweeps, set()).scan(path, kind)


def scan_overrides(overrides: list[str]) -> None:
    """The command line is the user's own: it may set user settings, but still never names code."""
    for o in overrides:
        for word in FORBIDDEN:
            if word in o.split("=", 1)[0]:
                raise RecipeError(f"override `{o}`: `{word}` is not allowed: {FORBIDDEN[word]}")
