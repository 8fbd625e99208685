"""A shared file read the way Hydra will read it, within bounds.

- Size first: a recipe is a few KB (the largest shipped one is 3 KB); past MAX_BYTES it is refused
  without being parsed.
- Its package (where its keys land) comes from Hydra's own header parser on the same first 512
  characters Hydra reads (hydra/_internal/core_plugins/file_config_source.py), not from a copy of
  its rules: blank lines skipped, indentation stripped, the last `@package` wins, a plain comment
  ends the header.
- YAML aliases make a 1 KB file stand for billions of nodes ("9 levels x 9 aliases"): walking it
  node by node hangs, and so would OmegaConf, which copies every alias. The node graph is counted
  once per distinct node (aliases share nodes), so the count of what it expands to takes
  microseconds; past MAX_NODES, or with an alias that contains itself, the file is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra.plugins.config_source import ConfigSource

from recipe_runner.errors import RecipeError

MAX_BYTES = 1 << 20  # 1 MiB
MAX_NODES = 50_000  # expanded YAML nodes; the shipped recipes have 100-300
HEADER_CHARS = 512  # what Hydra reads for the header


@dataclass
class SharedYaml:
    path: Path
    text: str
    root: yaml.Node | None
    package: str | None  # the header's @package, as Hydra reads it (None: the group's default)


def expanded_size(root: yaml.Node, path: Path) -> int:
    """Nodes the document expands to when every alias is copied; refuses an alias inside itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise RecipeError(f"{path}:{node.start_mark.line + 1}: a YAML alias contains itself: shared files "
                              f"are finite data")
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        open_nodes.discard(key)
        sizes[key] = min(total, MAX_NODES + 1)  # capped: the sum of capped parts still crosses the limit
        return sizes[key]

    return size(root)


def read_shared_yaml(path: Path) -> SharedYaml:
    try:
        nbytes = path.stat().st_size
        if nbytes > MAX_BYTES:
            raise RecipeError(f"{path}: {nbytes / 2**20:.1f} MB: a shared recipe or sweep file is at most "
                              f"{MAX_BYTES // 2**20} MB of YAML (data belongs in data files)")
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if root is not None and expanded_size(root, path) > MAX_NODES:
        raise RecipeError(f"{path}: expands to more than {MAX_NODES:,} YAML nodes (aliases counted at every use): "
                          f"refused as a shared file")
    try:
        header = ConfigSource._get_header_dict(text[:HEADER_CHARS])
    except ValueError as exc:  # Hydra refuses the same header when it loads the file
        raise RecipeError(f"{path}: bad header: {exc}") from None
    return SharedYaml(path, text, root, header.get("package"))


def package_prefix(package: str | None, group: str) -> list[str]:
    """Where a file's keys land: `_global_` -> the root; None -> under its group (`recipe`)."""
    if package is None:
        return group.split("/")
    if package == "_global_":
        return []
    if package.startswith("_global_."):
        return package[len("_global_."):].split(".")
    return package.replace("_group_", group.replace("/", ".")).split(".")
