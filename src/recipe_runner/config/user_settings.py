"""Settings that belong to the user, not to a recipe: where keys, data and files go.

A recipe says what to train and how. It never says which host receives a key or the data, which
environment variable holds a key, whether W&B uploads, or where on the user's disk files land.
Those keys come only from the command line, the environment (WANDB_MODE, the key variables) or
the user's own settings file:

    ~/.config/recipe-runner/user.yaml          ($XDG_CONFIG_HOME/recipe-runner/user.yaml)

    eval:
      judge:
        enabled: true
        base_url: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY
    logger:
      wandb:
        mode: online
        entity: my-team
    paths:
      data_roots: [~/corpora]      # folders a shared recipe may read data from (besides its own folder)
    synth:
      generator:
        base_url: http://localhost:8001/v1
        model: Qwen/Qwen2.5-7B-Instruct
        max_requests: 3000

The file is applied as command-line overrides placed before the user's own, so the command line
still wins. recipe_scan.py refuses these keys in recipe and sweep files.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from recipe_runner.errors import RecipeError

# key (or whole group) -> why it is the user's
USER_SETTINGS = {
    "eval.judge": "the judge's endpoint, model, key variable and budget decide where your answers and key go",
    "logger.wandb.mode": "online mode uploads your data, samples and config",
    "logger.wandb.entity": "the W&B team or user your run is uploaded to",
    "logger.wandb.project": "the W&B project (and so its visibility) your run is uploaded to",
    "paths": "where runs and caches are written on your disk",
    "serve": "what your server exposes, to whom and with which key (a shared recipe chooses what to train, "
             "never what to do)",
    "export": "what is exported and where it is written on your disk",
    "stage": "what the command does (train, serve, synthesize, ...): a shared recipe chooses what to train, "
             "never what to do",
    "adapter": "which of your adapters is loaded",
    "sweep_dir": "which of your sweep folders is read",
    "trial": "which study on your disk a run reports to (set by the search itself)",
    "train.resume": "which checkpoint on your disk is loaded (a checkpoint is a pickle)",
    "synth.generator": "the generator's endpoint, model, key variable and budget decide where your bible goes, which "
                       "key is sent and how much you spend",
}


def user_setting(dotted: str) -> str | None:
    """The user setting `dotted` is (or lies inside), else None: `eval.judge.base_url` -> `eval.judge`."""
    for key in USER_SETTINGS:
        if dotted == key or dotted.startswith(key + "."):
            return key
    return None


def holds_user_setting(dotted: str) -> bool:
    """True for a node above a user setting (`logger`, `logger.wandb`): a recipe may only set its other keys."""
    return any(key.startswith(dotted + ".") for key in USER_SETTINGS)


def settings_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "recipe-runner" / "user.yaml"


def _override_value(value) -> str:
    """A YAML scalar as Hydra override syntax: strings quoted, so URLs and spaces pass intact."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _leaves(path: Path, node: yaml.Node, parts: list[str], key: yaml.Node | None = None):
    """(dotted key, its key node, its value node) for every scalar (or list of scalars: paths.data_roots)."""
    if isinstance(node, yaml.MappingNode):
        for k, value in node.value:
            yield from _leaves(path, value, [*parts, str(k.value)], k)
    elif key is not None and (isinstance(node, yaml.ScalarNode) or (
            isinstance(node, yaml.SequenceNode) and all(isinstance(v, yaml.ScalarNode) for v in node.value))):
        yield ".".join(parts), key, node
    else:
        raise RecipeError(f"{path}:{node.start_mark.line + 1}: {'.'.join(parts)}: a user setting is one value")


def file_overrides(path: Path, cli_keys: set[str]) -> list[str]:
    """The settings file as overrides, minus the keys the command line sets itself."""
    if not path.is_file():
        return []
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise RecipeError(f"{path}:1: expected keys such as eval.judge.base_url (a mapping)")
    out = []
    for dotted, key, node in _leaves(path, root, []):
        if user_setting(dotted) is None:
            raise RecipeError(f"{path}:{key.start_mark.line + 1}: {dotted} is not a user setting; this file holds "
                              f"only {sorted(USER_SETTINGS)} (recipe keys go in a recipe or on the command line)")
        if dotted not in cli_keys:
            out.append(f"{dotted}={_override_value(yaml.safe_load(yaml.serialize(node)))}")
    return out
