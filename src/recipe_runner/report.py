"""What a run shows and leaves behind: the mix table, summary.json, the closing lines."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .mixing import Mix

console = Console(soft_wrap=True)  # long run paths stay on one line, copy-pasteable


def mix_table(m: Mix, run_dir: Path) -> None:
    """Print and save (mix.csv, mix.md) examples and tokens per source, before training."""
    table = Table(title=f"training mix (general:niche = {m.ratio:.2f}:1 in tokens)")
    cols = ["source", "role", "train ex", "train tokens", "share", "val ex", "val tokens", "dropped >max_len", "bad lines"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("source", "role") else "right")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in m.rows:
        cells = [r.source, r.role, f"{r.train_examples:,}", f"{r.train_tokens:,}", f"{r.share:.1%}",
                 f"{r.val_examples:,}", f"{r.val_tokens:,}", f"{r.dropped_too_long:,}", f"{r.bad_lines:,}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    with open(run_dir / "mix.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(m.rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in m.rows)
    (run_dir / "mix.md").write_text("\n".join(lines) + f"\n\ngeneral:niche = {m.ratio:.3f}:1 (tokens)\n")


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def closing_lines(run_dir: Path, s: dict) -> None:
    console.rule("[bold]done")
    console.print(f"run folder     {run_dir}")
    console.print(f"best adapter   {s.get('best_adapter')}  (epoch {s.get('best_epoch')}, "
                  f"{s.get('monitor')} = {s.get('best_score')})")
    for k, v in s.get("val_loss", {}).items():
        console.print(f"{k:<14} {v:.4f}")
    console.print(f"trained on     {s['trained_tokens']:,} tokens ({s['supervised_tokens']:,} supervised) "
                  f"at {s['tokens_per_second']:.0f} tok/s")
    console.print(f"peak memory    {s['peak_rss_mb']:.0f} MB RSS" +
                  (f", {s['peak_cuda_mb']:.0f} MB CUDA" if s.get("peak_cuda_mb") else ""))
    console.print(f"wall time      {s['wall_seconds']:.0f} s; summary: {run_dir / 'summary.json'}")
