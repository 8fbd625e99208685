"""What a run shows and leaves behind: the mix table, summary.json, the closing lines."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .cleaning import FILTER_NAMES
from .mixing import Mix
from .run_report import cell, ci_text, fmt, forgetting, persona_claim, side_by_side

console = Console(soft_wrap=True)  # long run paths stay on one line, copy-pasteable
if not console.is_terminal:  # logs and CI: rich assumes 80 columns and squeezes the tables to "gener…"
    console = Console(soft_wrap=True, width=160)


MIX_COLUMNS = ["source", "role", "read", "pool ex", "train ex", "train tokens", "share", "repeats", "turns",
               "val ex", "val tokens", "bad lines", "contaminated"]


def mix_cells(r) -> list[str]:
    return [r.source, r.role, f"{r.read:,}", f"{r.pool_examples:,}", f"{r.train_examples:,}", f"{r.train_tokens:,}",
            f"{r.share:.1%}", f"{r.repeats:.2f}", f"{r.turns:,}", f"{r.val_examples:,}", f"{r.val_tokens:,}",
            f"{r.bad_lines:,}", f"{r.contaminated:,}"]


def filters_of(m: Mix) -> list[str]:
    return [f for f in FILTER_NAMES if any(f in r.cleaned for r in m.rows)]


def mix_table(m: Mix, run_dir: Path) -> None:
    """Print and save (mix.csv, mix.md) examples and tokens per source, before training."""
    table = Table(title=f"training mix, epoch 0 (general:niche = {m.ratio:.2f}:1 in tokens)")
    for c in MIX_COLUMNS:
        table.add_column(c, justify="left" if c in ("source", "role") else "right")
    lines = ["| " + " | ".join(MIX_COLUMNS) + " |", "|" + "---|" * len(MIX_COLUMNS)]
    for r in m.rows:
        table.add_row(*mix_cells(r))
        lines.append("| " + " | ".join(mix_cells(r)) + " |")
    console.print(table)
    filters = filters_of(m)
    flat = [{**{k: v for k, v in asdict(r).items() if k != "cleaned"},
             **{f"cleaned_{f}": r.cleaned.get(f, 0) for f in filters}} for r in m.rows]
    with open(run_dir / "mix.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    lines += ["", "| source | " + " | ".join(filters) + " |", "|---|" + "---|" * len(filters)]
    lines += ["| " + r.source + " | " + " | ".join(str(r.cleaned.get(f, 0)) for f in filters) + " |" for r in m.rows]
    (run_dir / "mix.md").write_text("\n".join(lines) + f"\n\ngeneral:niche = {m.ratio:.3f}:1 (tokens)\n")
    cleaning_table(m, filters, run_dir)
    reused = [f"{n} ({', '.join(k for k, v in s.cache.items() if v['reused'])})"
              for n, s in m.sources.items() if any(v["reused"] for v in s.cache.values())]
    if reused:
        console.print(f"data cache: reused {'; '.join(reused)}")


def cleaning_table(m: Mix, filters: list[str], run_dir: Path) -> None:
    """Examples each cleaning filter dropped, per source; a few of them in dropped/<source>.<filter>.jsonl."""
    table = Table(title="cleaning: examples dropped by each filter")
    table.add_column("source")
    for f in filters:
        table.add_column(f, justify="right")
    for r in m.rows:
        table.add_row(r.source, *[f"{r.cleaned.get(f, 0):,}" for f in filters])
    console.print(table)
    for source, s in m.sources.items():
        for f, examples in s.samples.items():
            if examples:
                (run_dir / "dropped").mkdir(exist_ok=True)
                with open(run_dir / "dropped" / f"{source}.{f}.jsonl", "w", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def closing_lines(run_dir: Path, s: dict) -> None:
    console.rule("[bold]done")
    console.print(f"run folder     {run_dir}")
    if s.get("stage") == "compare":
        console.print(f"leaderboard    {s['table']} (+ compare.csv, plots) for {s['jobs']} jobs, {s['failed']} failed")
        return
    if s.get("stage") == "prepare":
        console.print(f"held-out sets  {run_dir / 'heldout'}")
        console.print(f"manifest       {run_dir / 'manifest.json'}  (sha256 {s['manifest_sha256'][:16]}...)")
        console.print(f"mix            general:niche = {s['general_to_niche_ratio']:.3f}:1 in tokens")
        return
    console.print(f"best adapter   {s.get('best_adapter')}  (epoch {s.get('best_epoch')}, "
                  f"{s.get('monitor')} = {fmt(s.get('best_score'))})")
    for k, v in s.get("val_loss", {}).items():
        console.print(f"{k:<14} {v:.4f}")
    console.print(f"trained on     {s['trained_tokens']:,} tokens ({s['supervised_tokens']:,} supervised) "
                  f"at {s['tokens_per_second']:.0f} tok/s")
    console.print(f"peak memory    {s['peak_rss_mb']:.0f} MB RSS" +
                  (f", {s['peak_cuda_mb']:.0f} MB CUDA" if s.get("peak_cuda_mb") else ""))
    last, base = s.get("checks_best") or s.get("checks_last") or {}, s.get("baseline") or {}
    if "persona/adherence" in last and "persona/adherence" in base:
        console.print(f"persona        epoch {last['epoch']} {persona_claim(last)} the prompt-only baseline: adherence "
                      f"{ci_text(last, 'persona/adherence')} vs {ci_text(base, 'persona/adherence')}, gain "
                      f"{ci_text(last, 'persona/adherence_gain', True)} (95 % intervals over prompts)", markup=False)
    if "persona/marker_rate" in last and "persona/marker_rate" in base:
        console.print(f"markers        {ci_text(last, 'persona/marker_rate')} of answers vs "
                      f"{ci_text(base, 'persona/marker_rate')}", markup=False)
    signals, moved = forgetting(base, last)
    if signals:
        console.print(f"forgetting     {'MOVED: ' + '; '.join(moved) if moved else 'small'}; measured: {'; '.join(signals)}",
                      markup=False)
    for prompt, before, after in side_by_side(run_dir, last.get("epoch")):  # hear the difference
        console.print(f"held-out       {cell(prompt)}", markup=False)
        console.print(f"  baseline     {cell(before)}", markup=False)
        console.print(f"  tuned        {cell(after)}", markup=False)
    if s.get("eval_seconds"):
        console.print(f"evaluation     {s['eval_seconds']:.0f} s ({100 * s['eval_fraction']:.0f} % of the run)")
    console.print(f"wall time      {s['wall_seconds']:.0f} s; summary: {run_dir / 'summary.json'}; "
                  f"report: {run_dir / 'report.md'}")
