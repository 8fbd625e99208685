"""Which files a shared recipe may make a run read.

What a run reads lands in the data cache, in `heldout/`, in samples and (uploaded) in W&B, so a
recipe that names `~/.aws/credentials` as a text source would copy your keys into them. A path a
shared file sets (after `~`, symlinks and `..`) must lie under the recipe's own folder, the
working directory, the project's bundled `data/`, or a folder you list in `paths.data_roots`
(your settings file or the command line), and no part of it below that root may start with a
dot (`.aws`, `.ssh`, `.git`, `.venv`). Paths you set yourself are yours: they are not checked.
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase
from pathlib import Path

# the keys that name files a run reads (fnmatch over dotted keys)
READ_PATH_KEYS = ("data.sources.*.path", "template.persona.bible", "eval.ordinary_prompts", "eval.persona_prompts",
                  "eval.dialogues")


def is_read_path_key(dotted: str) -> bool:
    return any(fnmatchcase(dotted, pattern) and dotted.count(".") == pattern.count(".") for pattern in READ_PATH_KEYS)


def allowed_roots(recipe_folders: list[Path], data_roots: list[str], project_data: Path) -> list[Path]:
    roots = [*recipe_folders, Path.cwd(), project_data, *(Path(os.path.expanduser(r)) for r in data_roots)]
    return [r.resolve() for r in roots]


def read_path_problem(value: str, roots: list[Path]) -> str | None:
    """Why a shared file may not make the run read `value`, or None."""
    path = Path(os.path.expanduser(value))
    resolved = path.resolve()  # follows symlinks and `..`: where the bytes really are
    for root in roots:
        if resolved == root or root in resolved.parents:
            hidden = [p for p in resolved.relative_to(root).parts if p.startswith(".")]
            if not hidden:
                return None
            return (f"= {value} reads from a hidden folder ({hidden[0]}/): a shared recipe never reads dot-folders "
                    f"(keys, credentials, git and venv live there); set the path yourself on the command line if "
                    f"you mean it")
    return (f"= {value} ({resolved}) lies outside the folders a shared recipe may read: the recipe's folder, the "
            f"working directory, the project's data/ and paths.data_roots ({', '.join(map(str, roots))}). Copy "
            f"the data next to the recipe, set the path yourself on the command line, or add its folder to "
            f"paths.data_roots in ~/.config/recipe-runner/user.yaml")
