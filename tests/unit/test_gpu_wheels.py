"""bench/gpu_wheels*.txt against pyproject.toml: a new dependency cannot break the GPU check's offline install unseen.

bench/gpu_check.sh installs bench/wheels/*.whl with --no-deps on an image that already holds the packages
in bench/gpu_image_packages.txt. So every runtime dependency of pyproject.toml (and [bench]'s trl), and all
that those need in turn, must be on that list or in a wheel list. The requirements are read from the
installed distributions' metadata (this venv's versions, which the wheel lists pin), with environment
markers evaluated for the image's CPython 3.12 on Linux x86-64. A package on the image is taken with what
it needs (the image's own version brings its own). No torch import: metadata only.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
WHEELS, WHEELS_WANDB, IMAGE = BENCH / "gpu_wheels.txt", BENCH / "gpu_wheels_wandb.txt", BENCH / "gpu_image_packages.txt"
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
          "os_name": "posix", "platform_machine": "x86_64"}
# PyPI has it as an sdist only: docs/gpu.md builds its wheel with `pip wheel` (hydra-core and omegaconf need it)
SDIST_ONLY = {"antlr4-python3-runtime": "4.9.3"}
OPTIONAL = "wandb"  # and what it needs: bench/gpu_wheels_wandb.txt (the check runs with W&B off)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def names(path: Path) -> set[str]:
    return {norm(line.split("#")[0].strip()) for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[^=\s]+", line), f"{path.name}: {line!r} is not NAME==VERSION"
            name, version = line.split("==")
            assert norm(name) not in out, f"{path.name}: {name} twice"
            out[norm(name)] = version
    return out


def project_roots() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("bench", []))


def closure(roots: list[str], provided: set[str]) -> tuple[dict[str, str], list[str]]:
    """{name: who needs it} for every package reachable from roots, not descending into `provided`;
    and the needed packages this venv does not have (their requirements are then unknown)."""
    needed: dict[str, str] = {}
    absent: list[str] = []
    done: dict[str, set[str]] = {}  # name -> extras whose requirements were followed
    todo = [(Requirement(r), "pyproject.toml") for r in roots]
    while todo:
        req, who = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**TARGET, "extra": ""}):
            continue
        name = norm(req.name)
        needed.setdefault(name, who)
        if name in provided:
            continue
        extras = {""} | {norm(e) for e in req.extras}
        new = extras - done.get(name, set())
        if not new:
            continue
        done.setdefault(name, set()).update(new)
        try:
            requires = distribution(req.name).requires or []
        except PackageNotFoundError:
            absent.append(f"{req.name} (needed by {who})")
            continue
        for text in requires:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({**TARGET, "extra": e}) for e in new):
                todo.append((Requirement(str(child).split(";")[0]), name))
    return needed, absent


def _installed(name: str) -> str | None:
    try:
        return distribution(name).version
    except PackageNotFoundError:
        return None


def _missing(needed: dict[str, str], have: set[str]) -> list[str]:
    return [f"{n}=={_installed(n)} (needed by {who})" for n, who in sorted(needed.items()) if n not in have]


def test_every_runtime_dependency_is_on_the_image_or_in_gpu_wheels():
    image, wheels = names(IMAGE), set(pins(WHEELS))
    needed, absent = closure([r for r in project_roots() if norm(Requirement(r).name) != OPTIONAL], image)
    assert not absent, f"needed on CPython 3.12/Linux but not installed in this venv: {absent}"
    missing = _missing(needed, image | wheels | set(SDIST_ONLY))
    assert not missing, ("the GPU check's offline install would miss these: add them to bench/gpu_wheels.txt "
                         f"(and their wheels' sizes to docs/gpu.md): {missing}")


def test_wandb_and_its_needs_are_in_the_optional_list():
    image, wheels, optional = names(IMAGE), set(pins(WHEELS)), set(pins(WHEELS_WANDB))
    needed, absent = closure([r for r in project_roots() if norm(Requirement(r).name) == OPTIONAL], image)
    assert OPTIONAL in needed, f"{OPTIONAL} is no longer a dependency: drop bench/gpu_wheels_wandb.txt"
    assert not absent, f"needed on CPython 3.12/Linux but not installed in this venv: {absent}"
    missing = _missing(needed, image | wheels | optional | set(SDIST_ONLY))
    assert not missing, f"add these to bench/gpu_wheels_wandb.txt: {missing}"


def test_pins_are_the_installed_versions_and_nothing_shadows_the_image():
    image = names(IMAGE)
    wheels, optional = pins(WHEELS), pins(WHEELS_WANDB)
    assert not set(wheels) & set(optional), f"in both wheel lists: {sorted(set(wheels) & set(optional))}"
    for path, listed in ((WHEELS, wheels), (WHEELS_WANDB, optional)):
        # installed with --no-deps, a wheel of an image package would replace the image's (CUDA) build
        assert not set(listed) & image, f"{path.name} lists packages the image has: {sorted(set(listed) & image)}"
        wrong = {n: (v, _installed(n)) for n, v in listed.items() if _installed(n) != v}
        assert not wrong, f"{path.name}: pinned vs installed here {wrong}: pin the venv's version"
    assert not set(SDIST_ONLY) & (set(wheels) | set(optional))


def test_the_sdist_only_package_is_built_by_the_documented_command():
    docs = (REPO / "docs" / "gpu.md").read_text()
    for name, version in SDIST_ONLY.items():
        assert _installed(name) == version, f"{name}: installed {_installed(name)}, docs/gpu.md builds {version}"
        assert f"pip wheel --no-deps -w bench/wheels {name}=={version}" in docs
