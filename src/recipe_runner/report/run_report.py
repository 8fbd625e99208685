"""The training part of report.md: what a user reads instead of digging through logs.

After the data sections (data_report.py): loss curves per source (loss_curves.png), the checks
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


# Forgetting is "small" while every signal the run measured stays inside these limits.
NLL_LIMIT = 0.05  # nats/token: how much less likely the base model's own everyday answers became
DRIFT_LIMIT_PCT = 5.0  # % rise of the held-out general loss over the base model's


def ci_text(row: dict, key: str, signed: bool = False) -> str:
    """`0.900 [0.850, 0.960]` from key, key_lo, key_hi (the 95 % bootstrap interval over prompts)."""
    f = "{:+.3f}" if signed else "{:.3f}"
    if row.get(key) is None:
        return "n/a"
    text = f.format(row[key])
    return text + (f" [{f.format(row[key + '_lo'])}, {f.format(row[key + '_hi'])}]" if key + "_lo" in row else "")


def persona_claim(tuned: dict) -> str:
    """beats / is indistinguishable from / is worse than the baseline, by the gain's interval."""
    lo, hi = tuned.get("persona/adherence_gain_lo"), tuned.get("persona/adherence_gain_hi")
    if lo is None:
        return "was not compared with"
    return "beats" if lo > 0 else "is worse than" if hi < 0 else "is indistinguishable from"


def forgetting(baseline: dict, tuned: dict) -> tuple[list[str], list[str]]:
    """(every forgetting signal the run measured, the ones that moved past their limit)."""
    signals, moved = [], []
    nll = tuned.get("forget/ordinary_nll_delta")
    if nll is not None:
        signals.append(f"ordinary-prompt NLL {nll:+.3f} nats/token (limit +{NLL_LIMIT})")
        if nll > NLL_LIMIT:
            moved.append(f"ordinary-prompt NLL rose {nll:+.3f} nats/token")
    drift = tuned.get("general_drift_pct")
    if drift is not None:
        signals.append(f"general held-out loss {drift:+.1f} % (limit +{DRIFT_LIMIT_PCT:g} %)")
        if drift > DRIFT_LIMIT_PCT:
            moved.append(f"general held-out loss rose {drift:+.1f} %")
    taboo, base_taboo = tuned.get("persona/taboo_rate"), baseline.get("persona/taboo_rate")
    if taboo is not None and base_taboo is not None:
        signals.append(f"taboo rate {taboo:.2f} vs baseline {base_taboo:.2f}")
        if taboo > base_taboo:
            moved.append(f"taboo rate rose to {taboo:.2f} from {base_taboo:.2f}")
    return signals, moved


def verdict(baseline: dict, tuned: dict) -> list[str]:
    """The claim with its interval, then every forgetting signal, saying which one moved."""
    if "persona/adherence" not in tuned or "persona/adherence" not in baseline:
        return ["No persona check was measured on both sides (set eval.persona_prompts)."]
    claim = persona_claim(tuned)
    lines = [f"**The fine-tune {claim} the prompt-only baseline**: adherence {ci_text(tuned, 'persona/adherence')} "
             f"vs {ci_text(baseline, 'persona/adherence')}, gain {ci_text(tuned, 'persona/adherence_gain', True)} "
             f"(95 % bootstrap intervals over prompts)."]
    if "persona/marker_rate" in tuned:
        lines += ["", f"Answers with a persona marker: {ci_text(tuned, 'persona/marker_rate')} vs "
                      f"{ci_text(baseline, 'persona/marker_rate')}, gain "
                      f"{ci_text(tuned, 'persona/marker_rate_gain', True)}."]
    signals, moved = forgetting(baseline, tuned)
    if signals:
        state = "**moved**: " + "; ".join(moved) if moved else "small"
        lines += ["", f"Forgetting {state} (measured: {'; '.join(signals)})."]
    return lines


def read_samples(run_dir: Path) -> list[dict]:
    """samples.jsonl: the answers the checks kept, baseline's and each checked epoch's."""
    path = run_dir / "samples.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def side_by_side(run_dir: Path, epoch, n: int = 3) -> list[tuple[str, str, str]]:
    """(held-out persona prompt, baseline answer, tuned answer) for the first n prompts."""
    rows = read_samples(run_dir)
    base = {r["prompt"]: r["answer"] for r in rows if r["epoch"] == "baseline" and r["set"] == "persona"}
    return [(r["prompt"], base.get(r["prompt"], ""), r["answer"]) for r in rows
            if r["epoch"] == epoch and r["set"] == "persona"][:n]


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
        shown = lambda row, k: ci_text(row, k) if k + "_lo" in row else fmt(row.get(k))  # noqa: E731
        md += [f"| {label} | {shown(baseline, k)} | {shown(tuned, k)} |" for k, (label, _) in HEADLINE.items()
               if k in baseline or k in tuned]
        md += ["", *verdict(baseline, tuned), ""]
        pairs = side_by_side(run_dir, tuned["epoch"])
        if pairs:
            md += ["### Held-out persona prompts, side by side", ""]
            for prompt, before, after in pairs:
                md += [f"> **{cell(prompt)}**", ">", f"> baseline: {cell(before)}", ">", f"> tuned: {cell(after)}", ""]
    md += samples_section(run_dir, chosen)
    return md


def samples_section(run_dir: Path, epoch) -> list[str]:
    rows = read_samples(run_dir)
    if not rows:
        return []
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
