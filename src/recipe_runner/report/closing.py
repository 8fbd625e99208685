"""The closing lines: what the run produced and whether the persona took, the last thing printed.

One function per stage, (run_dir, summary), named by its row in stages.py; chat and serve have
none (they said goodbye themselves).
"""

from __future__ import annotations

from pathlib import Path

from recipe_runner.console import console
from recipe_runner.evaluate.metrics import ADHERENCE, DUPLICATE_RATE, MARKER_RATE
from recipe_runner.report.run_report import (
    cell, ci_text, fmt, forgetting, persona_caveats, persona_claim, rubric_top, side_by_side,
)
from recipe_runner.stages import load, stage_named


def closing_lines(run_dir: Path, s: dict) -> None:
    """The `done` rule, the run folder, then the lines of the stage the summary names."""
    stage = stage_named(s.get("stage") or "train")  # train: what a summary without a stage always got
    if stage.closing is None:
        return
    console.rule("[bold]done")
    console.print(f"run folder     {run_dir}")
    load(stage.closing)(run_dir, s)


def compare_lines(run_dir: Path, s: dict) -> None:
    console.print(f"leaderboard    {s['table']} (+ compare.csv, plots) for {s['jobs']} jobs, {s['failed']} failed")


def export_lines(run_dir: Path, s: dict) -> None:
    console.print(f"exported       {s.get('format')} -> {s.get('out')} ({len(s.get('files', []))} files, listed above)")


def synthesize_lines(run_dir: Path, s: dict) -> None:
    c, out = s["counts"], Path(s["out"])
    console.print(f"accepted       {c['accepted']} of {c['dialogues']} dialogues ({c['dialogues_planned']} planned); "
                  f"rejected: {', '.join(f'{k} {v}' for k, v in s['rejected_first'].items()) or 'none'}")
    if s.get("stopped"):
        console.print(f"stopped        {s['stopped']}")
    console.print(f"training set   {out / 'accepted.jsonl'}  (a source with format: chat_jsonl, system: persona)")
    console.print(f"rejected       {out / 'rejected.jsonl'}  (each with its reasons)")
    console.print(f"report         {out / 'report.md'}")


def prepare_lines(run_dir: Path, s: dict) -> None:
    console.print(f"held-out sets  {run_dir / 'heldout'}")
    console.print(f"manifest       {run_dir / 'manifest.json'}  (sha256 {s['manifest_sha256'][:16]}...)")
    console.print(f"mix            general:niche = {s['general_to_niche_ratio']:.3f}:1 in tokens")


def train_lines(run_dir: Path, s: dict) -> None:
    """The best adapter, its losses and cost, and the persona against the prompt-only baseline."""
    console.print(f"best adapter   {s.get('best_adapter')}  (epoch {s.get('best_epoch')}, "
                  f"{s.get('monitor')} = {fmt(s.get('best_score'))})")
    for k, v in s.get("val_loss", {}).items():
        console.print(f"{k:<14} {v:.4f}")
    console.print(f"trained on     {s['trained_tokens']:,} tokens ({s['supervised_tokens']:,} supervised) "
                  f"at {s['tokens_per_second']:.0f} tok/s")
    console.print(f"peak memory    {s['peak_rss_mb']:.0f} MB RSS" +
                  (f", {s['peak_cuda_mb']:.0f} MB CUDA" if s.get("peak_cuda_mb") else ""))
    last, base = s.get("checks_best") or s.get("checks_last") or {}, s.get("baseline") or {}
    if ADHERENCE.key in last and ADHERENCE.key in base:
        headroom, top = s.get("min_headroom", 0.0), rubric_top(s.get("data_adherence"))
        console.print(f"persona        epoch {last['epoch']} {persona_claim(last, base, headroom, top)} the prompt-only "
                      f"baseline: adherence {ci_text(last, ADHERENCE.key)} vs {ci_text(base, ADHERENCE.key)}, gain "
                      f"{ci_text(last, ADHERENCE.gain, True)} (95 % intervals over prompts)", markup=False)
        for caveat in persona_caveats(last, base, headroom, top):
            console.print(f"  but          {caveat}", markup=False)
    if MARKER_RATE.key in last and MARKER_RATE.key in base:
        console.print(f"markers        {ci_text(last, MARKER_RATE.key)} of answers vs "
                      f"{ci_text(base, MARKER_RATE.key)}", markup=False)
    if DUPLICATE_RATE.key in last and DUPLICATE_RATE.key in base:
        console.print(f"distinct       {ci_text(last, DUPLICATE_RATE.key)} of answers repeat another prompt's answer vs "
                      f"{ci_text(base, DUPLICATE_RATE.key)}", markup=False)
    signals, moved = forgetting(base, last)
    if signals:
        console.print(f"forgetting     {'MOVED: ' + '; '.join(moved) if moved else 'small'}; measured: {'; '.join(signals)}",
                      markup=False)
    # the NLL is the signal another model's answers move (Falstaff on dolly: +0.254 vs +0.033 rewritten)
    nll = next((x for x in signals if x.startswith("ordinary-prompt NLL")), "not measured")
    for name in [n for n, by in (s.get("general_answers") or {}).items() if by == "source"]:
        console.print(f"general data   {name} is not in the base model's words, so forgetting also measures the pull "
                      f"toward its style ({nll}); to train on the base's own answers to its prompts: "
                      f"data.sources.{name}.answers=base", markup=False)
    for prompt, before, after in side_by_side(run_dir, last.get("epoch")):  # hear the difference
        console.print(f"held-out       {cell(prompt)}", markup=False)
        console.print(f"  baseline     {cell(before)}", markup=False)
        console.print(f"  tuned        {cell(after)}", markup=False)
    if s.get("eval_seconds"):
        console.print(f"evaluation     {s['eval_seconds']:.0f} s ({100 * s['eval_fraction']:.0f} % of the run)")
    console.print(f"wall time      {s['wall_seconds']:.0f} s; summary: {run_dir / 'summary.json'}; "
                  f"report: {run_dir / 'report.md'}")
