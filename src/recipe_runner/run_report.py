"""The end-of-run report: what a user reads instead of digging through logs.

report.md gets, after the data sections: loss curves per source (loss_curves.png), the checks
per epoch, the fine-tune against the prompt-only baseline with a plain verdict, samples of
baseline vs tuned answers, and the chosen checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

# check -> (label, higher is better?)
HEADLINE = {
    "persona/adherence": ("persona adherence (0-1)", True),
    "persona/marker_rate": ("answers with a persona marker", True),
    "persona/taboo_rate": ("answers breaking a taboo", False),
    "persona/length_compliance": ("answers within the sentence limit", True),
    "persona/language_rate": ("answers in the persona's language", True),
    "drift/last": ("adherence at the last scripted turn", True),
    "drift/slope": ("adherence slope per turn", True),
    "parrot/rate": ("answers using mined training phrases", False),
    "parrot/copy_rate": ("answers copying 12+ training words", False),
}


def loss_curves(run_dir: Path) -> Path | None:
    """train/loss per step and val/loss_<source> per epoch from logs/metrics.csv."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(path)))
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(10, 3.4))
    steps = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    if steps:
        ax_t.plot(*zip(*steps), lw=1, color="#4c72b0")
    ax_t.set(title="train/loss", xlabel="step")
    for key in sorted({k for r in rows for k in r if k.startswith("val/loss_") and r[k]}):
        points = [(int(float(r["epoch"])), float(r[key])) for r in rows if r.get(key)]
        ax_v.plot(*zip(*points), marker="o", label=key.removeprefix("val/loss_"))
    ax_v.set(title="held-out loss per source / role", xlabel="epoch")
    ax_v.legend(fontsize=7)
    fig.tight_layout()
    out = run_dir / "loss_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def fmt(v) -> str:
    return "" if v is None or v == "" else f"{float(v):.3f}"


def verdict(baseline: dict, tuned: dict, drift_pct: float | None) -> list[str]:
    won, lost = [], []
    for key, (label, higher) in HEADLINE.items():
        if key in baseline and key in tuned:
            better = tuned[key] > baseline[key] if higher else tuned[key] < baseline[key]
            if tuned[key] != baseline[key]:
                (won if better else lost).append(label)
    cost = f"general held-out loss {drift_pct:+.1f} % vs the base model" if drift_pct is not None else "unmeasured"
    measured = [k for k in HEADLINE if k in baseline and k in tuned]
    if not measured:
        return ["No persona check was measured on both sides (set eval.persona_prompts)."]
    if not won and not lost:
        return [f"The fine-tune **matched** the prompt-only baseline on all {len(measured)} checks "
                f"(no difference), at a forgetting cost of {cost}."]
    head = ("**The fine-tune beat the prompt-only baseline**" if len(won) > len(lost) else
            "**The fine-tune did not beat the prompt-only baseline**")
    return [f"{head} on {len(won)} of {len(won) + len(lost)} checks, at a forgetting cost of {cost}.", "",
            "Better: " + (", ".join(won) or "none") + ".", "", "Worse: " + (", ".join(lost) or "none") + "."]


def training_sections(run_dir: Path, summary: dict, history: list[dict], baseline: dict) -> list[str]:
    md = ["", "## Training", ""]
    if loss_curves(run_dir):
        md += ["![loss curves](loss_curves.png)", ""]
    chosen = summary.get("best_epoch")
    md += [f"Chosen checkpoint: epoch **{chosen}** by `{summary.get('monitor')}` = {fmt(summary.get('best_score'))} "
           f"-> `{summary.get('best_adapter')}`.", ""]
    if summary.get("stop_reason"):
        md += [f"Stopped early: {summary['stop_reason']}.", ""]
    if history:
        keys = [k for k in ["general_drift", "general_drift_pct", "forget/ordinary_nll_delta", *HEADLINE, "combined"]
                if any(k in r for r in history)]
        md += ["## Checks per epoch", "", "| epoch | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        md += ["| " + str(r["epoch"]) + " | " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in history]
        md += ["", "`general_drift`: held-out general loss minus the base model's (nats/token); "
               "`forget/ordinary_nll_delta`: how much less likely the tuned model finds the base model's own "
               "answers to everyday prompts (nats/token); `combined` ranks epochs for adapters/best.", ""]
        tuned = next((r for r in history if r["epoch"] == chosen), history[-1])
        md += ["## Fine-tune vs prompt-only baseline", "",
               f"Baseline: the base model with the whole bible as system prompt. Tuned: epoch {tuned['epoch']}.", "",
               "| check | baseline | tuned |", "|---|---|---|"]
        md += [f"| {label} | {fmt(baseline.get(k))} | {fmt(tuned.get(k))} |" for k, (label, _) in HEADLINE.items()
               if k in baseline or k in tuned]
        md += ["", *verdict(baseline, tuned, tuned.get("general_drift_pct")), ""]
    md += samples_section(run_dir, chosen)
    return md


def samples_section(run_dir: Path, epoch) -> list[str]:
    path = run_dir / "samples.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    last = max((r["epoch"] for r in rows if isinstance(r["epoch"], int)), default=None)
    epoch = epoch if any(r["epoch"] == epoch for r in rows) else last
    base = {(r["set"], r["prompt"]): r["answer"] for r in rows if r["epoch"] == "baseline"}
    md = ["## Samples (greedy)", "", f"Baseline vs tuned (epoch {epoch}).", "",
          "| set | prompt | baseline | tuned |", "|---|---|---|---|"]
    for r in rows:
        if r["epoch"] == epoch:
            before = base.get((r["set"], r["prompt"]), r.get("base_answer", ""))
            md.append("| " + " | ".join(cell(x) for x in (r["set"], r["prompt"], before, r["answer"])) + " |")
    return md + [""]


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:300]


def append_training(run_dir: Path, summary: dict, history: list[dict], baseline: dict) -> Path:
    path = run_dir / "report.md"
    text = path.read_text() if path.exists() else "# Run report\n"
    path.write_text(text.rstrip() + "\n" + "\n".join(training_sections(run_dir, summary, history, baseline)))
    return path
