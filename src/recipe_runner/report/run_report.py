"""The training part of report.md: what a user reads instead of digging through logs.

After the data sections (data_report.py): loss curves per source (loss_curves.png), the checks
per epoch, the fine-tune against the prompt-only baseline with a plain verdict, samples of
baseline vs tuned answers, and the chosen checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from recipe_runner.evaluate.metrics import (
    ADHERENCE, COMBINED, DUPLICATE_RATE, GENERAL_DRIFT, GENERAL_DRIFT_PCT, HEADLINE, HI, LO, MARKER_RATE,
    ORDINARY_NLL_DELTA, STILL_ANSWERS, TABOO_RATE,
)

# the columns of "Checks per epoch"; the metrics whose meaning its note gives
EPOCH_TABLE = (GENERAL_DRIFT, GENERAL_DRIFT_PCT, ORDINARY_NLL_DELTA, *HEADLINE, COMBINED)
EPOCH_NOTES = (GENERAL_DRIFT, ORDINARY_NLL_DELTA)


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
    return text + (f" [{f.format(row[key + LO])}, {f.format(row[key + HI])}]" if key + LO in row else "")


def templated(tuned: dict) -> bool:
    """More of its answers repeat another prompt's answer than the baseline's do, beyond noise."""
    return tuned.get(DUPLICATE_RATE.gain_lo, 0.0) > 0


def rubric_top(data_adherence: float | None = None) -> float:
    """The highest adherence the run could learn: the rubric's 1.0, or less when the niche data's
    own answers score less (a model that imitates its data perfectly scores what the data does)."""
    return 1.0 if data_adherence is None else min(1.0, data_adherence)


def data_outdone(tuned: dict, top: float) -> bool:
    """The data's own score is a ceiling for imitation, not for the rubric: a model that learned the
    voice past its data (Alex: data 0.825, tuned 0.875, gain +0.188 [+0.083, +0.292]) showed its gain."""
    return top < 1.0 and tuned.get(ADHERENCE.gain_lo, 0.0) > 0


def no_headroom(baseline: dict, min_headroom: float, top: float = 1.0) -> bool:
    """The baseline already scores so near the top (the rubric's, or the data's own) that no gain
    could clear the noise."""
    return ADHERENCE.key in baseline and top - baseline[ADHERENCE.key] < min_headroom


def persona_claim(tuned: dict, baseline: dict | None = None, min_headroom: float = 0.0, top: float = 1.0) -> str:
    """beats / is indistinguishable from / is worse than the baseline, by the gain's interval; a
    templated model or a baseline at the top gets no claim of a win."""
    lo, hi = tuned.get(ADHERENCE.gain_lo), tuned.get(ADHERENCE.gain_hi)
    if lo is None:
        return "was not compared with"
    if templated(tuned):
        return "is templated: it cannot be said to beat"
    if baseline and no_headroom(baseline, min_headroom, top) and hi >= 0 and not data_outdone(tuned, top):
        return "cannot be told apart by the rubric from"
    return "beats" if lo > 0 else "is worse than" if hi < 0 else "is indistinguishable from"


def persona_caveats(tuned: dict, baseline: dict, min_headroom: float, top: float = 1.0) -> list[str]:
    """Why the claim is not a plain win or loss: a templated model, a rubric with no room left."""
    out = []
    if templated(tuned):
        out.append(f"answers repeating another prompt's answer: {ci_text(tuned, DUPLICATE_RATE.key)} vs the baseline's "
                   f"{ci_text(baseline, DUPLICATE_RATE.key)}: different prompts get the same answer (a templated "
                   "persona), so its adherence says nothing about answering")
    if no_headroom(baseline, min_headroom, top) and not data_outdone(tuned, top):
        base, room = baseline[ADHERENCE.key], top - baseline[ADHERENCE.key]
        if top >= 1.0:
            out.append(f"the baseline already scores {base:.3f} of 1.0 on the rubric: a gain of at most {room:+.3f} is "
                       f"possible (< eval.min_headroom {min_headroom:g}), so the rubric cannot show one here; compare "
                       "the answers, the distinct-answer rate and the judge instead")
        else:
            out.append(f"the baseline already scores {base:.3f} and the niche data's own answers {top:.3f} on the "
                       f"rubric: a model that imitates its data perfectly gains at most {room:+.3f} (< eval.min_headroom "
                       f"{min_headroom:g}), so the rubric cannot show a gain here; give the data more of the voice the "
                       "bible asks for (its markers, its length), or compare the answers and the judge instead")
    return out


def forgetting(baseline: dict, tuned: dict) -> tuple[list[str], list[str]]:
    """(every forgetting signal the run measured, the ones that moved past their limit). An NLL that
    rose while the checkable answers held is named a style shift, not lost ability."""
    signals, moved = [], []
    still = tuned.get(STILL_ANSWERS.key)
    held = still is not None and tuned.get(STILL_ANSWERS.gain_hi, 0.0) >= 0  # not clearly fewer right answers
    nll = tuned.get(ORDINARY_NLL_DELTA.key)
    if nll is not None:
        signals.append(f"ordinary-prompt NLL {nll:+.3f} nats/token (limit +{NLL_LIMIT})")
        if nll > NLL_LIMIT:
            moved.append(f"ordinary-prompt NLL rose {nll:+.3f} nats/token" + (
                " while the checkable answers held: style, not lost ability" if held else ""))
    if still is not None:
        signals.append(f"checkable questions answered right {ci_text(tuned, STILL_ANSWERS.key)} vs the base's "
                       f"{fmt(baseline.get(STILL_ANSWERS.key))}, change {ci_text(tuned, STILL_ANSWERS.gain, True)}")
        if not held:
            moved.append(f"checkable answers fell {ci_text(tuned, STILL_ANSWERS.gain, True)}: lost ability")
    drift = tuned.get(GENERAL_DRIFT_PCT.key)
    if drift is not None:
        signals.append(f"general held-out loss {drift:+.1f} % (limit +{DRIFT_LIMIT_PCT:g} %)")
        if drift > DRIFT_LIMIT_PCT:
            moved.append(f"general held-out loss rose {drift:+.1f} %")
    taboo, base_taboo = tuned.get(TABOO_RATE.key), baseline.get(TABOO_RATE.key)
    if taboo is not None and base_taboo is not None:
        signals.append(f"taboo rate {taboo:.2f} vs baseline {base_taboo:.2f}")
        if taboo > base_taboo:
            moved.append(f"taboo rate rose to {taboo:.2f} from {base_taboo:.2f}")
    return signals, moved


def verdict(baseline: dict, tuned: dict, min_headroom: float = 0.0, top: float = 1.0) -> list[str]:
    """The claim with its interval, its caveats, then every forgetting signal, saying which one moved."""
    if ADHERENCE.key not in tuned or ADHERENCE.key not in baseline:
        return ["No persona check was measured on both sides (set eval.persona_prompts)."]
    claim = persona_claim(tuned, baseline, min_headroom, top)
    lines = [f"**The fine-tune {claim} the prompt-only baseline**: adherence {ci_text(tuned, ADHERENCE.key)} "
             f"vs {ci_text(baseline, ADHERENCE.key)}, gain {ci_text(tuned, ADHERENCE.gain, True)} "
             f"(95 % bootstrap intervals over prompts)."]
    lines += ["", *[f"- {c[0].upper()}{c[1:]}." for c in persona_caveats(tuned, baseline, min_headroom, top)]]
    if MARKER_RATE.key in tuned:
        lines += ["", f"Answers with a persona marker: {ci_text(tuned, MARKER_RATE.key)} vs "
                      f"{ci_text(baseline, MARKER_RATE.key)}, gain "
                      f"{ci_text(tuned, MARKER_RATE.gain, True)}."]
    if DUPLICATE_RATE.key in tuned:
        lines += ["", f"Answers repeating another prompt's answer: {ci_text(tuned, DUPLICATE_RATE.key)} vs "
                      f"{ci_text(baseline, DUPLICATE_RATE.key)}, change {ci_text(tuned, DUPLICATE_RATE.gain, True)}."]
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
        keys = [m.key for m in EPOCH_TABLE if any(m.key in r for r in history)]
        md += ["## Checks per epoch", "", "| epoch | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        md += ["| " + str(r["epoch"]) + " | " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in history]
        md += ["", "; ".join(f"`{m.key}`: {m.meaning}" for m in EPOCH_NOTES)
               + f"; `{COMBINED.key}` ranks epochs for adapters/best.", ""]
        tuned = next((r for r in history if r["epoch"] == chosen), history[-1])
        md += ["## Fine-tune vs prompt-only baseline", "",
               f"Baseline: the base model with the whole bible as system prompt. Tuned: epoch {tuned['epoch']}.", "",
               "| check | baseline | tuned |", "|---|---|---|"]
        shown = lambda row, k: ci_text(row, k) if k + LO in row else fmt(row.get(k))  # noqa: E731
        md += [f"| {m.label} | {shown(baseline, m.key)} | {shown(tuned, m.key)} |" for m in HEADLINE
               if m.key in baseline or m.key in tuned]
        top = rubric_top(summary.get("data_adherence"))
        md += ["", *verdict(baseline, tuned, summary.get("min_headroom", 0.0), top), ""]
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
