"""stage=chat: the real command in a pseudo-terminal, as a user types at it."""

from __future__ import annotations

import io
import os
import sys

import pexpect

import conftest
from conftest import REPO, run_cli


def spawn_chat(adapter, out, *extra: str) -> pexpect.spawn:
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
           "XDG_CONFIG_HOME": conftest.NO_USER_SETTINGS}
    env.pop("WANDB_MODE", None)
    args = ["run.py", "stage=chat", f"adapter={adapter}", "sampling.temperature=0", "sampling.max_new_tokens=8",
            "logger.wandb.enabled=false", f"paths.output_dir={out}", *extra]
    return pexpect.spawn(sys.executable, args, cwd=str(REPO), env=env, encoding="utf-8", timeout=120,
                         dimensions=(40, 200))


def test_chat_session(tiny_runs, tmp_path):
    """One session: header, a streamed reply, the baseline under it, /switch, /reset, Ctrl-D."""
    child = spawn_chat(tiny_runs["alex"], tmp_path / "out")
    child.logfile_read = seen = io.StringIO()
    try:
        child.expect("persona +alex")
        child.expect("adapters/best")
        child.expect("system +You are Alex")
        child.expect("commands .*/baseline")
        child.expect_exact("you> ")
        child.sendline("what breaks first in production?")
        child.expect(r"alex> \S.*\r\n")  # the streamed reply, on the persona's line
        child.expect_exact("you> ")
        child.sendline("/baseline")
        child.expect(r"baseline> .*\r\n")
        child.expect_exact("you> ")
        child.sendline("/frobnicate")
        child.expect("unknown command /frobnicate; commands: /reset +/switch")
        child.expect_exact("you> ")
        child.sendline("/switch /no/such/adapter")
        child.expect("error: adapter=/no/such/adapter: no such folder")
        child.expect_exact("you> ")
        child.sendline(f"/switch {tiny_runs['echo']}")
        child.expect("switched to alex-2; new conversation")
        child.expect_exact(str(tiny_runs["echo"] / "adapters" / "best"))
        child.expect_exact("you> ")
        child.sendline("/reset")
        child.expect("conversation cleared")
        child.expect_exact("you> ")
        child.sendline("and what breaks second?")
        child.expect(r"alex-2> \S.*\r\n")
        child.expect_exact("you> ")
        child.sendeof()
        child.expect("bye: 2 replies")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, seen.getvalue()[-3000:]
    assert "Traceback" not in seen.getvalue() and "\x1b[" not in seen.getvalue()  # plain text
    summaries = list((tmp_path / "out").rglob("summary.json"))
    assert len(summaries) == 1 and '"turns": 2' in summaries[0].read_text()
    transcript = summaries[0].with_name("chat.jsonl").read_text().splitlines()
    assert len(transcript) == 3 and '"baseline_of": "alex"' in transcript[1]


def test_chat_bad_input(tmp_path):
    """A folder that is no adapter, and no adapter at all: one `error:` line, status 2."""
    (tmp_path / "notes").mkdir()
    res = run_cli("stage=chat", f"adapter={tmp_path / 'notes'}", "logger.wandb.enabled=false",
                  f"paths.output_dir={tmp_path / 'out'}")
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(errors) == 1 and str(tmp_path / "notes") in errors[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    res = run_cli("stage=chat", "logger.wandb.enabled=false", f"paths.output_dir={tmp_path / 'out'}")
    assert res.returncode == 2 and "adapter=" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
