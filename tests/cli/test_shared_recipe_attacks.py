"""Issue 24's attacks on shared recipes, each run as the victim would run it: `python run.py
recipe=downloaded.yaml` (sometimes `stage=prepare`), a canary key in the environment, a listener on
localhost. Each must be refused before anything loads: exit 2, one `error:` line naming file and
key, no request received, no file written, nothing executed, the canary nowhere.

Then the layers one by one: the composed check alone refuses what the text scan would have let
through (a gap between our reading and Hydra's can no longer decide), and property tests hold the
text scan's header and defaults rules against Hydra's own loader."""

from __future__ import annotations

import os
import pickle
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import REPO, run_cli
from judge_endpoint import judge_endpoint
from recipe_runner.errors import RecipeError

CANARY = "sk-canary-24-c0ffee"
HEADER = "# @package _global_\n"
TRICK_HEADERS = {  # Hydra applies all three at the top level; the old scan read them as `recipe.*`
    "blank_first_line": "\n" + HEADER,
    "indented": "   " + HEADER,
    "second_package_wins": "# @package recipe\n" + HEADER,
}


class Marker:
    """Unpickling this touches a file: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def victim(tmp_path: Path, recipe: Path, *extra: str, env: dict | None = None, flags: tuple = ()):
    out, cache = tmp_path / "out", tmp_path / "cache"
    res = run_cli(*flags, f"recipe={recipe}", *extra, f"paths.output_dir={out}", f"paths.cache_dir={cache}",
                  env={"MY_SECRET": CANARY, "OPENAI_API_KEY": CANARY, "WANDB_API_KEY": CANARY,
                       "RECIPE_RUNNER_CACHE": str(cache), **(env or {})}, timeout=120)
    return res, out, cache


def assert_refused(res, out: Path, cache: Path, *named: str) -> None:
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    for text in named:
        assert text in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists() and not cache.exists()  # refused before any write
    assert CANARY not in res.stdout + res.stderr


# 1. the header check disagreed with Hydra's: every user-setting rule was skipped
@pytest.mark.parametrize("trick", sorted(TRICK_HEADERS))
@pytest.mark.parametrize("payload, key", [
    # the key goes to the listener with the bible (stage=synthesize + a generator)
    ("name: a\nstage: synthesize\nsynth:\n  generator:\n    base_url: {url}\n    model: m\n    api_key_env: MY_SECRET\n",
     "`stage`"),
    # W&B forced online to the listener through the environment Hydra sets for the job
    ("name: a\nhydra:\n  job:\n    env_set:\n      WANDB_MODE: online\n      WANDB_BASE_URL: {url}\n", "`hydra"),
    ("defaults:\n  - alex_persona_cpu\n  - _self_\nname: a\neval:\n  judge:\n    enabled: true\n"
     "    base_url: {url}\n    api_key_env: MY_SECRET\n", "`eval.judge"),
])
def test_a_header_hydra_reads_differently_is_refused(trick, payload, key, tmp_path):
    with judge_endpoint() as (url, seen):
        recipe = tmp_path / "downloaded.yaml"
        recipe.write_text(TRICK_HEADERS[trick] + payload.format(url=url))
        res, out, cache = victim(tmp_path, recipe, "stage=prepare" if "stage:" not in payload else "name=x")
    assert_refused(res, out, cache, f"{recipe}:", key)
    assert seen == []


# 2. a defaults entry walked out of conf/ into a file that was never scanned: code ran
@pytest.mark.parametrize("where", ["outside_the_checkout", "inside_the_checkout"])
def test_a_defaults_entry_cannot_load_a_file_from_outside_the_recipes(where, tmp_path):
    marker = tmp_path / "code-ran"
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(pickle.dumps(Marker(marker)))
    folder = tmp_path if where == "outside_the_checkout" else REPO / "data" / "zz_attack"
    folder.mkdir(exist_ok=True)
    settings_file = folder / "settings.yaml"
    settings_file.write_text(f"{HEADER}hydra:\n  callbacks:\n    x:\n      _target_: pandas.read_pickle\n"
                             f"      filepath_or_buffer: {pkl}\n")
    try:
        entry = "/" + os.path.relpath(settings_file.with_suffix(""), REPO / "conf")
        recipe = tmp_path / "downloaded.yaml"
        recipe.write_text(f"{HEADER}defaults:\n  - alex_persona_cpu\n  - {entry}\n  - _self_\nname: a\n")
        res, out, cache = victim(tmp_path, recipe, "stage=prepare")
    finally:
        if where == "inside_the_checkout":
            settings_file.unlink()
            folder.rmdir()
    assert_refused(res, out, cache, f"{recipe}:4: `defaults` entry `{entry}` is not a plain recipe name")
    assert not marker.exists()


# 3. a resolver name built by interpolation passed the regex: the variable's value reached W&B files
def test_an_interpolated_resolver_name_is_refused(tmp_path):
    recipe = tmp_path / "downloaded.yaml"
    recipe.write_text(f"{HEADER}defaults:\n  - alex_persona_cpu\n  - _self_\nname: a\ndata:\n  placeholders:\n"
                      "    x: env\ndescription: \"${oc.${data.placeholders.x}:MY_SECRET}\"\n")
    res, out, cache = victim(tmp_path, recipe, "stage=prepare")
    assert_refused(res, out, cache, f"{recipe}:9: `description` builds a resolver name from an interpolation")


# 4. an alias bomb kept the scan busy for minutes; a 100 MB recipe is refused by its size
def test_an_alias_bomb_and_a_huge_recipe_are_refused_at_once(tmp_path):
    lines = [HEADER + "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")  # 1 KB standing for 9^10 nodes
    res, out, cache = victim(tmp_path, bomb)  # a hang would hit run_cli's timeout (120 s)
    assert_refused(res, out, cache, f"{bomb}: expands to more than 50,000 YAML nodes")
    huge = tmp_path / "huge.yaml"
    with huge.open("w") as f:
        f.write(HEADER + "name: huge\n")
        f.truncate(100 * 2**20)  # 100 MB (sparse)
    res, out, cache = victim(tmp_path, huge)
    assert_refused(res, out, cache, f"{huge}: 100.0 MB: a shared recipe or sweep file is at most 1 MB")


# weaker, also measured: any file as a data source; an open server
def test_a_recipe_reads_data_only_from_its_own_folder_the_working_directory_or_your_data_roots(tmp_path):
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {CANARY}\n" * 40)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "linked").symlink_to(home / ".aws")
    source = "data:\n  sources:\n    creds:\n      path: {path}\n      format: text\n      role: niche\n"
    for path, named in [("~/.aws/credentials", "lies outside the folders a shared recipe may read"),
                        (f"{shared}/linked/credentials", "lies outside the folders a shared recipe may read"),
                        (f"{home}/.aws/credentials", "lies outside the folders a shared recipe may read")]:
        recipe = shared / "downloaded.yaml"
        recipe.write_text(f"{HEADER}defaults:\n  - alex_persona_cpu\n  - _self_\nname: a\n" + source.format(path=path))
        res, out, cache = victim(tmp_path, recipe, "stage=prepare", env={"HOME": str(home)})
        assert_refused(res, out, cache, f"{recipe}:9: `data.sources.creds.path` = {path}", named)
    # a dot-folder is never read, even under an allowed root (here: paths.data_roots = the home folder)
    xdg = tmp_path / "xdg" / "recipe-runner"
    xdg.mkdir(parents=True)
    (xdg / "user.yaml").write_text(f"paths:\n  data_roots: [{home}]\n")
    recipe.write_text(f"{HEADER}defaults:\n  - alex_persona_cpu\n  - _self_\nname: a\n"
                      + source.format(path="~/.aws/credentials"))
    res, out, cache = victim(tmp_path, recipe, "stage=prepare",
                             env={"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert_refused(res, out, cache, "reads from a hidden folder (.aws/)")
    # data you list in paths.data_roots, next to the recipe, or named on your own command line is read
    (home / "corpora").mkdir()
    for ok in [f"{home}/corpora/a.txt", f"{shared}/next_to_it.txt"]:
        recipe.write_text(f"{HEADER}defaults:\n  - alex_persona_cpu\n  - _self_\nname: a\n" + source.format(path=ok))
        res, _, _ = victim(tmp_path, recipe, flags=("--cfg", "job"),
                           env={"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
        assert res.returncode == 0, res.stderr
    res, _, _ = victim(tmp_path, recipe, f"data.sources.creds.path={home}/.aws/credentials", flags=("--cfg", "job"),
                       env={"HOME": str(home)})
    assert res.returncode == 0, res.stderr  # your own command line: your choice


@pytest.mark.parametrize("payload, named", [
    ("serve:\n  host: 0.0.0.0\n", ":2: `serve` is a user setting"),
    ("stage: serve\n", ":2: `stage` is a user setting"),
    ("adapter: /tmp/somewhere\n", ":2: `adapter` is a user setting"),
    ("export:\n  format: gguf\n", ":2: `export` is a user setting"),
    ("train:\n  resume: /tmp/evil.ckpt\n", ":3: `train.resume` is a user setting"),
    ("name: ../../../tmp/elsewhere\n", ":2: `name` = '../../../tmp/elsewhere': a recipe's name names its folders"),
])
def test_a_recipe_chooses_what_to_train_never_what_to_do(payload, named, tmp_path):
    recipe = tmp_path / "downloaded.yaml"
    recipe.write_text(HEADER + payload)
    res, out, cache = victim(tmp_path, recipe)
    assert_refused(res, out, cache, f"{recipe}{named}")


def test_a_sweep_file_is_composed_and_checked_too(tmp_path):
    sweep = REPO / "conf" / "sweep" / "zz_attack.yaml"
    sweep.write_text("\n" + HEADER + "hydra:\n  sweeper:\n    params:\n      lora.r: 4,8\n"
                     "      data.sources.alex.path: data/alex/dialogues.jsonl,/etc/passwd\n")
    try:
        res, out, cache = victim(tmp_path, REPO / "recipes" / "alex_persona_cpu.yaml", "sweep=zz_attack", flags=("-m",))
    finally:
        sweep.unlink()
    assert_refused(res, out, cache, f"{sweep}:7: `hydra.sweeper.params.data.sources.alex.path` = /etc/passwd")


# the composed check alone: what the text scan would have missed, composition still refuses
@pytest.mark.parametrize("trick", sorted(TRICK_HEADERS))
@pytest.mark.parametrize("payload, key", [
    ("eval:\n  judge:\n    base_url: http://127.0.0.1:9/v1\n", "eval.judge.base_url"),
    ("hydra:\n  job:\n    env_copy: [MY_SECRET]\n", "hydra.job.env_copy"),
    ("stage: synthesize\n", "stage"),
    ("logger:\n  wandb:\n    mode: online\n", "logger.wandb.mode"),
    ("description: ${oc.env:MY_SECRET}\n", "description"),
    ("name: a\ndata:\n  sources:\n    s:\n      path: /etc/passwd\n      format: text\n", "data.sources.s.path"),
])
def test_the_composed_check_refuses_without_the_text_scan(trick, payload, key, tmp_path, monkeypatch):
    from recipe_runner.cli import CONF
    from recipe_runner.config.composed_check import SharedFiles, check_composed

    staged = tmp_path / "staged"
    (staged / "recipe").mkdir(parents=True)
    recipe = tmp_path / "downloaded.yaml"
    recipe.write_text(TRICK_HEADERS[trick] + payload)
    (staged / "recipe" / "file__downloaded.yaml").symlink_to(recipe)
    monkeypatch.setenv("MY_SECRET", CANARY)  # env_copy reads it while composing: Hydra fails without it
    with pytest.raises(RecipeError, match=rf"^{recipe} \(or a file it builds on\): `{key}"):
        check_composed(CONF, staged, ["recipe=file__downloaded"], SharedFiles({"file__downloaded": recipe}, None),
                       REPO / "data")


def test_a_defaults_entry_that_walks_out_is_refused_by_composition_too(tmp_path):
    from recipe_runner.cli import CONF
    from recipe_runner.config.composed_check import SharedFiles, check_composed

    (tmp_path / "cb.yaml").write_text(HEADER + "hydra:\n  callbacks:\n    x:\n      _target_: builtins.print\n")
    staged = tmp_path / "staged"
    (staged / "recipe").mkdir(parents=True)
    recipe = tmp_path / "downloaded.yaml"
    entry = "/" + os.path.relpath(tmp_path / "cb", CONF)
    recipe.write_text(f"{HEADER}defaults:\n  - {entry}\n  - _self_\nname: a\n")
    (staged / "recipe" / "file__downloaded.yaml").symlink_to(recipe)
    with pytest.raises(RecipeError, match=r"`hydra.callbacks` is not allowed in a recipe"):
        check_composed(CONF, staged, ["recipe=file__downloaded"], SharedFiles({"file__downloaded": recipe}, None),
                       REPO / "data")


# property tests: the text scan reads headers and defaults entries as Hydra does
header_lines = st.lists(st.sampled_from(["", "   ", "# @package _global_", "  # @package _global_",
                                         "# @package recipe", "#@package _global_", "# just a comment",
                                         "# @package _global_.eval.judge", "# @package _group_"]),
                        min_size=0, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=header_lines, bom=st.booleans(), crlf=st.booleans())
def test_the_scan_takes_the_package_hydra_takes(lines, bom, crlf, tmp_path_factory):
    from hydra._internal.core_plugins.file_config_source import FileConfigSource

    from recipe_runner.config.shared_yaml import read_shared_yaml

    folder = tmp_path_factory.mktemp("conf")
    (folder / "recipe").mkdir()
    newline = "\r\n" if crlf else "\n"
    text = ("\ufeff" if bom else "") + newline.join([*lines, "base_url: http://127.0.0.1:9/v1", ""])
    (folder / "recipe" / "x.yaml").write_bytes(text.encode())
    hydra_reads = FileConfigSource(provider="t", path=f"file://{folder}").load_config("recipe/x").header["package"]
    assert read_shared_yaml(folder / "recipe" / "x.yaml").package == hydra_reads


segment = st.sampled_from(["..", ".", "recipe", "recipes", "hydra", "launcher", "model", "logger", "alex_persona",
                           "hub", "csv", "tmp", "", "x", "${oc.env:HOME}"])
entry_name = st.builds(lambda lead, parts, pkg: lead + "/".join(parts) + pkg,
                       st.sampled_from(["", "/"]), st.lists(segment, min_size=1, max_size=4),
                       st.sampled_from(["", "@_global_", "@eval.judge"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(group=st.one_of(st.none(), st.builds(lambda kw, g: kw + g, st.sampled_from(["", "override ", "optional "]),
                                            entry_name)),
       option=st.one_of(entry_name, st.text(string.ascii_letters + "._/-", max_size=12)))
def test_an_accepted_defaults_entry_makes_hydra_load_only_project_files(group, option, tmp_path_factory):
    """Whatever the entry, the scan refuses it or Hydra loads nothing outside recipes/ and conf/."""
    from hydra._internal.core_plugins.file_config_source import FileConfigSource

    from recipe_runner.cli import CONF, RECIPES
    from recipe_runner.config.composed_check import compose
    from recipe_runner.config.recipe_scan import scan_shared_files

    folder = tmp_path_factory.mktemp("shared")
    (folder / "recipe").mkdir()
    recipe = folder / "recipe" / "file__x.yaml"
    entry = f"{option!r}" if group is None else f"{{{group!r}: {option!r}}}"
    recipe.write_text(f"{HEADER}defaults:\n  - {entry}\n  - _self_\nname: x\n")
    try:
        scan_shared_files([(recipe, "recipe")], RECIPES, CONF / "sweep", CONF)
    except RecipeError:
        return  # refused: nothing loads
    loaded, real = [], FileConfigSource.load_config

    def recording(self, config_path):
        loaded.append(Path(self.path.replace("file://", "")) / config_path)
        return real(self, config_path)

    FileConfigSource.load_config = recording
    try:
        compose(CONF, [folder], ["recipe=file__x"])
    except Exception:
        pass  # Hydra's own error (a missing option): it still must not have read outside
    finally:
        FileConfigSource.load_config = real
    for path in loaded:
        resolved = Path(os.path.realpath(str(path) + ("" if str(path).endswith(".yaml") else ".yaml")))
        assert resolved == recipe.resolve() or RECIPES in resolved.parents or CONF in resolved.parents, (entry, path)
