"""Data flows one way: no package imports a later stage (module-level or inside a function).

The order is the run's: the shared ground (errors, console, the stage table), config (schema,
choices, shared-file safety), model (which base, tokenizer, precision), data (read, clean,
template, mix), train, evaluate, report, then what uses a trained adapter, the bible or the run's scores (use,
synthesize, search), then what ties the stages together (validate, pipeline, runner, cli). An import
from a later stage is a circle in waiting: move the shared piece down instead.
"""

import ast

from conftest import REPO

SRC = REPO / "src" / "recipe_runner"
LAYER = {"__init__": 0, "errors": 0, "console": 0, "stages": 0, "config": 1, "model": 2, "data": 3, "train": 4,
         "evaluate": 5, "report": 6, "use": 7, "synthesize": 7, "search": 7, "validate": 8, "pipeline": 8, "runner": 9, "cli": 10}


def imports_of_later_stages() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        here = path.relative_to(SRC).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("recipe_runner."):
                    there = name.split(".")[1]
                    if LAYER[there] > LAYER[here]:
                        found.append(f"{path.relative_to(SRC)}:{node.lineno} imports {name} ({there} comes after {here})")
    return found


def test_every_package_has_a_layer():
    packages = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.rglob("*.py")}
    assert packages <= LAYER.keys(), packages - LAYER.keys()


def test_no_package_imports_a_later_stage():
    assert imports_of_later_stages() == []


def test_the_check_sees_a_backward_import(tmp_path, monkeypatch):
    """The test can fail: a data module importing train is found."""
    fake = tmp_path / "recipe_runner" / "data"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("def f():\n    from recipe_runner.train.module import ROLES\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path / "recipe_runner")
    assert imports_of_later_stages() == ["data/x.py:2 imports recipe_runner.train.module (train comes after data)"]
