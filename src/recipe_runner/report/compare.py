"""stage=compare: a sweep's leaderboard without W&B.

Reads every job folder of a sweep (summary.json, checks, logs/metrics.csv, or error.txt) and
writes compare.md and compare.csv into the sweep folder, one plot per swept parameter
(compare_<key>.png: held-out loss and persona adherence against the parameter) and the
validation curves of all jobs overlaid (compare_loss_curves.png). After a search
(hydra/sweeper=optuna) the trials on the study's Pareto front (pareto.json, written by
search/driver.py) are marked, pruned trials say so, and compare_pareto.png plots the adherence
gain against forgetting with the front.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rich.table import Table

from recipe_runner.errors import RecipeError
from recipe_runner.console import console
from recipe_runner.evaluate.metrics import (
    ADHERENCE, COPY_RATE, GENERAL_DRIFT_PCT, MARKER_RATE, ORDINARY_NLL_DELTA, PARROT_RATE,
)

# the checks' columns: (column, read from the best epoch's checks or the baseline's, key)
CHECK_COLUMNS = [("persona", "best", ADHERENCE.key), ("baseline", "baseline", ADHERENCE.key),
                 ("gain", "best", ADHERENCE.gain), ("gain lo", "best", ADHERENCE.gain_lo),
                 ("gain hi", "best", ADHERENCE.gain_hi),  # gain lo/hi: 95 % bootstrap interval over prompts
                 ("markers", "best", MARKER_RATE.key), ("general drift %", "best", GENERAL_DRIFT_PCT.key),
                 ("ordinary nll Δ", "best", ORDINARY_NLL_DELTA.key), ("parroting", "best", PARROT_RATE.key),
                 ("copies", "best", COPY_RATE.key)]
COLUMNS = ["job", "status", "best epoch", "val/loss", "val/loss_niche", "val/loss_general",
           *[column for column, _, _ in CHECK_COLUMNS], "tok/s"]


def swept(job: Path) -> dict[str, str]:
    """`3_data.mix.general_ratio=10,lora.r=16` -> {"data.mix.general_ratio": "10", "lora.r": "16"}."""
    _, _, rest = job.name.partition("_")
    return dict(item.split("=", 1) for item in rest.split(",") if "=" in item)


def job_row(job: Path) -> dict:
    row = {"job": job.name.split("_")[0], **{f"param:{k}": v for k, v in swept(job).items()}}
    if (job / "error.txt").exists() or not (job / "summary.json").exists():
        reason = (job / "error.txt").read_text().strip().splitlines()[0] if (job / "error.txt").exists() else "no summary"
        return {**row, "status": f"failed: {reason[:80]}"}
    s = json.loads((job / "summary.json").read_text())
    checks = {"best": s.get("checks_best") or {}, "baseline": s.get("baseline") or {}}
    val = s.get("val_loss", {})
    pruned = (s.get("search") or {}).get("pruned_at_epoch")
    return {**row, "status": "ok" if pruned is None else f"pruned at epoch {pruned}", "best epoch": s.get("best_epoch"), "val/loss": val.get("val/loss"),
            "val/loss_niche": val.get("val/loss_niche"), "val/loss_general": val.get("val/loss_general"),
            **{column: checks[side].get(key) for column, side, key in CHECK_COLUMNS},
            "tok/s": round(s["tokens_per_second"]) if s.get("tokens_per_second") else None}


def cell(v) -> str:
    if v is None or v == "":
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def sort_key(value: str):
    """Numbers by value (2 < 10), then anything else as text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def plots(rows: list[dict], jobs: list[Path], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    ok = [r for r in rows if r["status"] == "ok" or r["status"].startswith("pruned")]
    for key in sorted({k for r in ok for k in r if k.startswith("param:")}):
        name = key.removeprefix("param:")
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        values = sorted({r[key] for r in ok}, key=sort_key)  # each value once, in numeric order
        for ax, metric in zip(axes, ("val/loss", "persona")):
            points = [(values.index(r[key]), r[metric], r["job"]) for r in ok if r.get(metric) is not None]
            ax.scatter([p[0] for p in points], [p[1] for p in points])
            for x, y, job in points:  # jobs sharing this value differ in the other swept keys
                ax.annotate(job, (x, y), textcoords="offset points", xytext=(4, 2), fontsize=7)
            ax.set_xticks(range(len(values)), values)
            ax.set(xlabel=name, title=metric)
        fig.tight_layout()
        path = out / f"compare_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for job in jobs:
        metrics = job / "logs" / "metrics.csv"
        if metrics.exists():
            pts = [(int(float(r["epoch"])), float(r["val/loss"])) for r in csv.DictReader(open(metrics)) if r.get("val/loss")]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=job.name[:40])
    ax.set(xlabel="epoch", title="val/loss per job")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "compare_loss_curves.png", dpi=100)
    plt.close(fig)
    return made + [out / "compare_loss_curves.png"]


def pareto_plot(rows: list[dict], out: Path) -> Path | None:
    """Adherence gain (up is better) against the ordinary-prompt NLL change (left is better), the
    front joined: the trade-off a search found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(float(r["ordinary nll Δ"]), float(r["gain"]), r["job"], r.get("pareto") == "yes") for r in rows
              if r["status"] == "ok" and r.get("gain") is not None and r.get("ordinary nll Δ") is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in points if not p[3]], [p[1] for p in points if not p[3]], color="grey", label="trial")
    front = sorted((p for p in points if p[3]), key=lambda p: p[0])
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="C3", label="Pareto front")
    for x, y, job, _ in points:
        ax.annotate(job, (x, y), textcoords="offset points", xytext=(4, 2), fontsize=7)
    ax.axhline(0, color="black", lw=0.5)
    ax.set(xlabel="forgetting: ordinary-prompt NLL change (nats/token, lower is better)",
           ylabel="adherence gain over the prompt-only baseline", title="search: gain vs forgetting")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "compare_pareto.png", dpi=100)
    plt.close(fig)
    return out / "compare_pareto.png"


def compare(sweep_dir: str) -> dict:
    folder = Path(sweep_dir)
    jobs = sorted((p for p in folder.iterdir() if p.is_dir() and p.name[:1].isdigit()),
                  key=lambda p: int(p.name.split("_")[0])) if folder.is_dir() else []
    if not jobs:
        raise RecipeError(f"sweep_dir={sweep_dir}: no job folders (0_..., 1_...) found there")
    rows = [job_row(j) for j in jobs]
    front = json.loads((folder / "pareto.json").read_text())["trials"] if (folder / "pareto.json").exists() else None
    columns = COLUMNS[1:] if front is None else ["pareto", *COLUMNS[1:]]
    for r in rows:
        r["pareto"] = "yes" if front is not None and int(r["job"]) in front else ""
    params = sorted({k for r in rows for k in r if k.startswith("param:")})
    header = ["job", *[p.removeprefix("param:") for p in params], *columns]
    cells = [[r["job"], *[r.get(p, "") for p in params], *[cell(r.get(c)) for c in columns]] for r in rows]
    with open(folder / "compare.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *cells])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, c)) + " |" for c in cells]
    images = plots(rows, jobs, folder) + ([p for p in [pareto_plot(rows, folder)] if p] if front is not None else [])
    (folder / "compare.md").write_text(f"# Sweep {folder.name}\n\n" + "\n".join(md) + "\n\n"
                                       + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n")
    table = Table(title=f"sweep {folder}")
    for h in header:
        table.add_column(h, justify="left" if h in ("job", "status") else "right")
    for c in cells:
        table.add_row(*map(str, c))
    console.print(table)
    return {"stage": "compare", "sweep_dir": str(folder), "jobs": len(rows),
            "failed": sum(r["status"] != "ok" for r in rows), "table": str(folder / "compare.md")}
