"""The data part of report.md: the mix and cleaning tables, length percentiles and a
histogram of token lengths per source (lengths.png); the same tables go to W&B (report/wandb.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recipe_runner.data.mixing import Mix
from recipe_runner.report.mix_table import MIX_COLUMNS, filters_of, mix_cells


def length_histogram(m: Mix, max_length: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    names = list(m.lengths)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * len(names)), squeeze=False)
    bins = np.linspace(0, max_length, 41)
    for ax, name in zip(axes[:, 0], names):
        ax.hist(m.lengths[name], bins=bins, color="#4c72b0")
        ax.set_title(f"{name}: {len(m.lengths[name]):,} examples after cleaning", fontsize=9)
        ax.set_ylabel("examples", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("tokens per example (templated)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def percentiles(lengths: np.ndarray) -> list[str]:
    p = np.percentile(lengths, [0, 50, 95, 100]) if len(lengths) else [0, 0, 0, 0]
    return [f"{int(v):,}" for v in p]


def diversity_section(diversity: dict) -> list[str]:
    """Each niche source's variety (data/diversity.py), with its warning when it may teach one line."""
    if not diversity:
        return []
    md = ["## Niche diversity (assistant turns of the training pool)", "",
          "| source | answers | distinct 2-grams | largest near-duplicate group | same opening | most common opening |",
          "|---|---|---|---|---|---|"]
    md += [f"| {n} | {d.answers:,} | {d.distinct_2:.2f} | {d.largest_cluster:.0%} | {d.same_opening:.0%} | {d.opening} |"
           for n, d in diversity.items()]
    md += [""] + [f"**Warning: niche source {n}: {d.warning}.**" for n, d in diversity.items() if d.warning]
    return md + [""]


def data_sections(m: Mix, recipe: str, manifest: dict, diversity: dict | None = None) -> list[str]:
    """report.md's data part: the mix, the cleaning counts, the niche sets' variety, token lengths
    (lengths.png beside it)."""
    filters = filters_of(m)
    md = [f"# Data report: {recipe}", "",
          f"general:niche = **{m.ratio:.3f}:1** in tokens (epoch 0); manifest `{manifest['manifest_sha256'][:16]}`", "",
          "## Mix", "", "| " + " | ".join(MIX_COLUMNS) + " |", "|" + "---|" * len(MIX_COLUMNS)]
    md += ["| " + " | ".join(mix_cells(r)) + " |" for r in m.rows]
    md += ["", "## Cleaning: examples dropped per filter", "",
           "| source | " + " | ".join(filters) + " |", "|---|" + "---|" * len(filters)]
    md += ["| " + r.source + " | " + " | ".join(f"{r.cleaned.get(f, 0):,}" for f in filters) + " |" for r in m.rows]
    md += ["", "A few dropped examples per filter are in `dropped/<source>.<filter>.jsonl`.", "",
           *diversity_section(diversity or {}), "## Lengths (tokens, after cleaning)", "", "| source | min | median | p95 | max |", "|---|---|---|---|---|"]
    md += [f"| {n} | " + " | ".join(percentiles(v)) + " |" for n, v in m.lengths.items()]
    md += ["", "![token lengths per source](lengths.png)", "",
           "Held-out sets: `heldout/<source>.jsonl`. Manifest: `manifest.json`.", ""]
    return md


def write_report(run_dir: Path, data: list[str], training: list[str] | None = None) -> Path:
    """report.md, written whole each time: the data sections when the data is ready (a run that
    fails later still has them), the same plus the training sections when the run ends."""
    text = "\n".join(data)
    if training:
        text = text.rstrip() + "\n" + "\n".join(training)
    path = run_dir / "report.md"
    path.write_text(text)
    return path

