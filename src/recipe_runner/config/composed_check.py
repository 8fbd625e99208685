"""The check that cannot be talked around: what Hydra composes, with and without the shared files.

The text scan (recipe_scan.py) reads shared files the way we think Hydra reads them; any gap
between the two is a way in (a blank first line, a second `@package`, a defaults entry that walks
out of conf/). So before Hydra runs the job, the config is composed by Hydra's own loader twice,
on the same search path and the same command line and user settings:

    full      what the job will get
    without   every shared file (the recipe, the sweep file) replaced by an empty file of the
              same name: only the schema, conf/ and what the user typed

Every key the shared files changed is then judged: a user setting or any `hydra.*` key (a sweep
file: only `hydra.sweeper.params`) is refused, naming the file and line that set it (from the scan;
otherwise the shared file it came through); so is a value calling an impure resolver, a name that
is not a plain folder name, a data path outside the allowed folders (shared_paths.py), a written
folder outside the working directory, and a value that interpolates a key whose value reads the
environment. Keys the user-setting values interpolate (`hydra.run.dir` uses `name`, `stage`,
`paths.output_dir`) count as user settings too. Composing twice costs ~0.3 s a recipe.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from recipe_runner.errors import RecipeError
from recipe_runner.config.interpolations import references, resolver_problem
from recipe_runner.config.recipe_scan import SEARCH_SETTINGS, USER_RULE, WRITTEN_PATHS, plain_name, \
    swept_key_problem, swept_recipe_files, sweep_values, written_path_problem
from recipe_runner.config.shared_paths import allowed_roots, is_read_path_key, read_path_problem
from recipe_runner.config.user_settings import USER_SETTINGS, user_setting

SWEPT = ("hydra", "sweeper", "params")
CHOICES = ("hydra", "runtime", "choices")  # Hydra records each group choice here, defaults lists' included
CHOOSABLE = ("model", "logger", "recipe")  # the groups whose choice a recipe may record (recipe_scan.py)
# Hydra assigns these after merging, from the search path and the command line (config_loader_impl.py):
# the stand-ins' folder shows in the first, overrides dropped from `without` in the second
ASSIGNED = (("hydra", "runtime", "config_sources"), ("hydra", "job", "override_dirname"))
TASK = ("hydra", "overrides", "task")  # the command line's overrides, appended to whatever the files set


@dataclass
class SharedFiles:
    """What the command composes: recipe options (Hydra's name -> file) and the sweep or search file."""
    recipes: dict[str, Path]
    sweep: tuple[str, Path] | None
    locations: dict[str, str] = field(default_factory=dict)  # dotted key -> file:line, from the scan
    sweep_group: str = "sweep"  # or hparams_search: a search file (conf/hparams_search/NAME.yaml)


def compose(conf: Path, prepend: list[Path], overrides: list[str]):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    from recipe_runner.config.schema import register

    register()
    search_path = create_config_search_path(str(conf))
    for folder in reversed(prepend):  # like --config-dir: ahead of conf/
        search_path.prepend("command-line", f"file://{folder}")
    loader = ConfigLoaderImpl(config_search_path=search_path)
    return loader.load_configuration(config_name="config", overrides=overrides, run_mode=RunMode.RUN)


def leaves(node, path: tuple = ()) -> dict[tuple, object]:
    """Every leaf by its key path; hydra.sweeper.params is one leaf per swept key (keys hold dots)."""
    if isinstance(node, dict) and path != SWEPT:
        out = {}
        for k, v in node.items():
            out.update(leaves(v, (*path, str(k))))
        return out or {path: {}}
    if path == SWEPT:
        return {(*path, str(k)): v for k, v in (node or {}).items()} or {path: {}}
    return {path: node}


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)


class ComposedCheck:
    def __init__(self, conf: Path, staged: Path | None, fixed: list[str], cli_keys: set[str],
                 project_data: Path, shared: SharedFiles, multirun: bool):
        self.conf, self.staged, self.fixed, self.cli_keys, self.multirun = conf, staged, fixed, cli_keys, multirun
        self.project_data, self.shared = project_data, shared
        self.tmp = Path(tempfile.mkdtemp(prefix="recipe-runner-check-"))

    def standins(self, group: str, names) -> Path:
        """A search-path folder holding an empty `group/NAME.yaml` for each name."""
        folder = self.tmp / f"no_{group}"
        (folder / group).mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / group / f"{name}.yaml").write_text("# @package _global_\n")
        return folder

    def compose(self, prepend: list[Path], recipe: str, overrides: list[str] | None = None):
        overrides = [*(self.fixed if overrides is None else overrides), f"recipe={recipe}"] + \
            ([f"{self.shared.sweep_group}={self.shared.sweep[0]}"] if self.shared.sweep else [])
        cfg = compose(self.conf, prepend + ([self.staged] if self.staged else []), overrides)
        return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True), cfg

    def compose_without(self, prepend: list[Path], recipe: str, what: str):
        """The composition with stand-ins. An override of a key only the shared file defines
        (`data.sources.alex.path=...`) cannot apply without it: then only the overrides of user
        settings and hydra are kept, which is all the comparison of those keys needs."""
        self.dropped = []
        try:
            return self.compose(prepend, recipe)[0]
        except Exception:
            pass
        kept = [o for o in self.fixed if o.split("=", 1)[0].lstrip("+~").startswith(("hydra.", "hydra/"))
                or user_setting(o.split("=", 1)[0].lstrip("+~"))]
        self.dropped = [o for o in self.fixed if o not in kept]
        try:
            return self.compose(prepend, recipe, kept)[0]
        except Exception as exc:
            raise RecipeError(f"{what}: cannot compose the config without the shared files to check them: "
                              f"{composition_error(exc)}") from None

    def compose_full(self, recipe: str, what: str):
        """What the job gets. Where Hydra cannot compose it, the job cannot start either, and Hydra's
        own message (valid values, the full key) says why: None. Not so for a sweep, whose jobs
        compose with the swept values added, so a failure there refuses."""
        try:
            return self.compose([], recipe)
        except Exception as exc:
            if self.multirun:
                raise RecipeError(f"{what}: cannot compose the config: {composition_error(exc)}") from None
            return None

    def run(self) -> None:
        no_recipes = self.standins("recipe", self.shared.recipes)
        recipes = dict(self.shared.recipes)
        if self.shared.sweep:
            name, path = self.shared.sweep
            first = next(iter(recipes))
            group = self.shared.sweep_group
            with_sweep = self.compose_without([no_recipes], first, f"{group}={name}")
            without = self.compose_without([no_recipes, self.standins(group, [name])], first, f"{group}={name}")
            recipes.update(self.check_sweep(path, leaves(with_sweep), leaves(without)))
        for option, path in recipes.items():
            composed = self.compose_full(option, str(path))
            if composed is None:
                return  # Hydra reports the error itself and runs nothing
            without = self.compose_without([self.standins("recipe", [option])], option, str(path))
            self.check_recipe(path, leaves(composed[0]), leaves(without), composed[1])

    def refuse(self, source: Path, key: str, why: str):
        where = self.location(key) or f"{source} (or a file it builds on)"
        raise RecipeError(f"{where}: `{key}` {why}")

    def location(self, key: str) -> str | None:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.shared.locations:
                return self.shared.locations[".".join(parts[:n])]
        return None

    def check_recipe(self, source: Path, full: dict, without: dict, full_cfg) -> None:
        changed = sorted(k for k in full.keys() | without.keys() if full.get(k, None) != without.get(k, None)
                         or (k in full) != (k in without))
        for path in changed:
            key = ".".join(path)
            if any(key == k or key.startswith(k + ".") for k in self.cli_keys):
                continue  # the user set it: theirs
            if path[:3] == CHOICES and len(path) == 4 and path[3].split("/")[0] in CHOOSABLE:
                continue  # the choice of a group a recipe may choose (its defaults list), recorded by Hydra
            if path[:3] in ASSIGNED:
                continue
            if path == TASK and [o for o in full[path] if o not in self.dropped] == without.get(path):
                continue  # only the overrides `without` could not take
            if path[0] == "hydra":
                self.refuse(source, key, "is not allowed in a recipe: hydra.* settings (environment variables, "
                                         "launcher, callbacks, output folders) are the user's, set on the command "
                                         "line")
            setting = user_setting(key)
            if setting:
                self.refuse(source, key, USER_RULE.format(why=USER_SETTINGS[setting]))
            self.check_value(source, path, full.get(path), full, full_cfg)
        self.check_interpolated_by_user_settings(source, full, without)

    def check_value(self, source: Path, path: tuple, value, full: dict, full_cfg) -> None:
        key = ".".join(path)
        for text in strings(value):
            problem = resolver_problem(text)
            if problem:
                self.refuse(source, key, problem)
            for ref in references(text, list(path)):
                if self.impure(ref, full, set()):
                    self.refuse(source, key, f"interpolates `{ref}`, whose value reads the environment: a shared "
                                             f"file cannot copy it into the config")
        if key == "name" and not (isinstance(value, str) and plain_name(value)):
            self.refuse(source, key, f"= {value!r}: a recipe's name names its folders: letters, digits, _ . - only")
        if key in WRITTEN_PATHS and isinstance(value, str):
            problem = written_path_problem(str(OmegaConf.select(full_cfg, key)))
            if problem:
                self.refuse(source, key, problem)
        if is_read_path_key(key) and value is not None and key not in self.cli_keys:
            resolved = OmegaConf.select(full_cfg, key)
            roots = allowed_roots([source.parent], list(full_cfg.paths.data_roots), self.project_data)
            problem = read_path_problem(str(resolved), roots) if resolved not in (None, "???") else None
            if problem:
                self.refuse(source, key, problem)

    def impure(self, key: str, full: dict, seen: set[str]) -> bool:
        """Whether `key`'s value (or one it interpolates) calls a resolver a shared file may not."""
        if key in seen or len(seen) > 50:
            return False
        seen.add(key)
        for path, value in full.items():
            dotted = ".".join(path)
            if dotted == key or dotted.startswith(key + "."):
                for text in strings(value):
                    if resolver_problem(text) or any(self.impure(r, full, seen) for r in references(text, list(path))):
                        return True
        return False

    def check_interpolated_by_user_settings(self, source: Path, full: dict, without: dict) -> None:
        """`hydra.run.dir: ${paths.output_dir}/${run_folder:${stage},${name}}/...`: the keys a user
        setting's value reads are as much the user's as the setting (name is checked above)."""
        for path, value in full.items():
            if path[0] != "hydra" and not user_setting(".".join(path)):
                continue
            for text in strings(value):
                for ref in references(text, list(path)):
                    if ref == "name" or ref.startswith("hydra.") or user_setting(ref):
                        continue
                    ref_path = tuple(ref.split("."))
                    if full.get(ref_path) != without.get(ref_path):
                        self.refuse(source, ref, f"is read by the user setting `{'.'.join(path)}`: a shared file "
                                                 f"cannot change it")

    def check_sweep(self, source: Path, with_sweep: dict, without: dict) -> dict[str, Path]:
        """A sweep file changes hydra.sweeper.params and nothing else; returns the recipes it sweeps."""
        swept_recipes = {}
        changed = sorted(k for k in with_sweep.keys() | without.keys()
                         if with_sweep.get(k) != without.get(k) or (k in with_sweep) != (k in without))
        for path in changed:
            key = ".".join(path)
            if path[:3] in ASSIGNED:
                continue
            if path == SWEPT:
                continue  # the empty mapping of the file without params
            if self.shared.sweep_group == "hparams_search" and len(path) == 3 and path[:2] == SWEPT[:2] \
                    and path[2] in SEARCH_SETTINGS:
                continue  # names and numbers the sweeper's schema checked when this composed
            if path[:3] != SWEPT or len(path) != 4:
                self.refuse(source, key, "is not allowed: a sweep file sets hydra.sweeper.params only" +
                            (f" (a search file also hydra.sweeper.{{{','.join(SEARCH_SETTINGS)}}})"
                             if self.shared.sweep_group == "hparams_search" else ""))
            swept, value = path[3], with_sweep.get(path)
            problem = swept_key_problem(swept)
            if problem:
                self.refuse(source, key, problem)
            for text in strings(value):
                problem = resolver_problem(text)
                if problem:
                    self.refuse(source, key, problem)
            values = sweep_values(swept, str(value))
            if swept.lstrip("+~") == "recipe":
                try:
                    swept_recipes.update({p.stem: p for p in swept_recipe_files(source.parents[2] / "recipes", values)})
                except ValueError as exc:
                    self.refuse(source, key, str(exc))
            if is_read_path_key(swept.lstrip("+~")):
                roots = allowed_roots([], list(with_sweep.get(("paths", "data_roots")) or []), self.project_data)
                for v in values:
                    problem = read_path_problem(v, roots)
                    if problem:
                        self.refuse(source, key, problem)
        return swept_recipes


def composition_error(exc: Exception) -> str:
    lines = [str(e).strip() for e in (exc, exc.__cause__) if e is not None and str(e).strip()]
    return " ".join(" ".join(lines).split()) or type(exc).__name__


def check_composed(conf: Path, staged: Path | None, argv: list[str], shared: SharedFiles, project_data: Path) -> None:
    """Compose as the job will (argv: the command line with the user's settings) and refuse what
    the shared files changed that they may not. A sweep's values are checked per value, not per job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    fixed, parser = [], OverridesParser.create()
    for text in overrides:
        if text.startswith(("recipe=", "sweep=", "hparams_search=")):
            continue
        try:
            if parser.parse_override(text).is_sweep_override():
                continue  # the user's own sweep: its values are the user's; recipes among them are in `shared`
        except Exception:
            pass  # Hydra reports a malformed override itself, when it composes below
        fixed.append(text)
    cli_keys = {o.split("=", 1)[0].lstrip("+~") for o in fixed}
    multirun = any(a in ("-m", "--multirun") for a in argv)
    check = ComposedCheck(conf, staged, fixed, cli_keys, project_data, shared, multirun)
    try:
        check.run()
    finally:
        import shutil

        shutil.rmtree(check.tmp, ignore_errors=True)
