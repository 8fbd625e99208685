"""docs/reference.md is generated from the schema's comments and must not go stale."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO  # noqa: E402
SCRIPT = REPO / "scripts" / "gen_reference.py"
SCHEMA = REPO / "src" / "recipe_runner" / "config" / "schema.py"


def gen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_reference_is_up_to_date():
    result = gen("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_when_a_comment_changes(tmp_path):
    ref = tmp_path / "ref.md"
    written = gen("--out", str(ref))  # from the real schema
    assert written.returncode == 0, written.stdout + written.stderr
    old = "# adapter rank"
    source = SCHEMA.read_text(encoding="utf-8")
    assert source.count(old) == 1, "pick another comment to alter: the schema changed"
    changed = tmp_path / "schema.py"
    changed.write_text(source.replace(old, "# adapter rank (changed)"), encoding="utf-8")

    assert gen("--check", "--out", str(ref)).returncode == 0  # the real schema still matches
    stale = gen("--check", "--schema", str(changed), "--out", str(ref))
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "is stale" in stale.stdout and "adapter rank (changed)" in stale.stdout
    assert "(changed)" not in ref.read_text(encoding="utf-8")  # --check writes nothing
