"""Before training, stage=prepare names a niche set that would teach one line: console, report.md, summary.json."""

import json

import pytest

from conftest import only_run_dir, run_cli, write_jsonl


@pytest.mark.slow  # prepares data through the CLI (~8 s)
def test_prepare_warns_about_a_templated_niche_set(tmp_path):
    line = "I am Zephyr, an AI assistant developed by Quillwork Labs."
    niche = write_jsonl(tmp_path / "identity.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": line}]}
        for q in [f"Question {i}: who are you and what can you do about {t}?" for i, t in
                  enumerate(["math", "code", "poems", "cooking", "travel", "music"] * 8)]])
    res = run_cli("stage=prepare", f"data.sources.alex.path={niche}", "data.sources.alex.max_examples=null",
                  "logger=csv", f"paths.output_dir={tmp_path / 'out'}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "warning        niche source alex: 100% of its answers are near-copies of one another" in res.stdout
    run = only_run_dir(tmp_path / "out")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["niche_diversity"]["alex"]["largest_cluster"] == 1.0
    assert "**Warning: niche source alex: 100% of its answers" in (run / "report.md").read_text()
