"""The mix table, printed before training and saved as mix.csv / mix.md, and the cleaning table."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from recipe_runner.data.cleaning import FILTER_NAMES
from recipe_runner.data.mixing import Mix
from recipe_runner.console import console

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
