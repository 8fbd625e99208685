"""The synthesis report: counts per stage, why dialogues were rejected, how diverse and how long
the accepted ones are, how they score on the bible, and what the generator cost.

Diversity is distinct-n (unique n-grams / all n-grams over persona turns: 1.0 = nothing repeated,
a generator stuck on one phrase drifts towards 0) and topic coverage (topics with an accepted
dialogue / topics planned). Both are shown for all generated dialogues and for the accepted ones,
so a filter that keeps only one kind of answer shows up as a drop.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from recipe_runner.data.bible import Bible
from recipe_runner.evaluate.persona_score import PersonaRubric, score_answers


def distinct_n(texts: list[str], n: int) -> float | None:
    grams = [tuple(w[i:i + n]) for w in (t.lower().split() for t in texts) for i in range(len(w) - n + 1)]
    return round(len(set(grams)) / len(grams), 3) if grams else None


def persona_turns(dialogues: list[dict]) -> list[str]:
    return [m["content"] for d in dialogues for m in d["messages"] if m["role"] == "assistant"]


def diversity(dialogues: list[dict], topic_of: dict[str, str], topics: list[str]) -> dict:
    said = persona_turns(dialogues)
    covered = Counter(topic_of[d["id"]] for d in dialogues)
    return {"distinct_1": distinct_n(said, 1), "distinct_2": distinct_n(said, 2),
            "topics_covered": sum(1 for t in topics if covered[t]), "topics_planned": len(topics),
            "per_topic": {t: covered[t] for t in topics}}


def voice(dialogues: list[dict], bible: Bible) -> dict:
    rates = score_answers(persona_turns(dialogues), PersonaRubric.from_bible(bible))
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rates.items()}


def length_plot(accepted: list[dict], path: Path) -> Path | None:
    if not accepted:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    turns = [sum(m["role"] == "user" for m in d["messages"]) for d in accepted]
    words = [len(t.split()) for t in persona_turns(accepted)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 2.8))
    a.hist(turns, bins=np.arange(0.5, max(turns) + 1.5), color="#4c72b0")
    a.set_xlabel("user turns per dialogue", fontsize=8)
    a.set_ylabel("accepted dialogues", fontsize=8)
    b.hist(words, bins=30, color="#55a868")
    b.set_xlabel("words per persona turn", fontsize=8)
    b.set_ylabel("persona turns", fontsize=8)
    for ax in (a, b):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(rows: list[tuple], header: tuple) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _rate(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def report_markdown(r: dict) -> str:
    c, lines = r["counts"], [f"# Synthesis: {r['name']}", ""]
    if r.get("stopped"):
        lines += [f"**Stopped early: {r['stopped']}.** Run the same command again to continue.", ""]
    lines += [f"Generator `{r['generator']}`, templates `{r['template_sha']}`, mode {r['mode']}, seed {r['seed']}.", ""]
    lines += _table([
        ("situations planned", c["situations"]), ("synopses generated", c["synopses"]),
        ("synopses unusable", c["synopses_failed"]), ("dialogues planned", c["dialogues_planned"]),
        ("dialogues generated", c["dialogues"]), ("stopped early (a rule broken mid-dialogue)", c["stopped_early"]),
        ("accepted", c["accepted"]), ("rejected", c["rejected"])], ("stage", "count"))
    lines += ["", "## Rejections", "",
              "A dialogue may fail several checks: *first* counts each by its first reason, *any* by every one.", ""]
    lines += _table([(k, r["rejected_first"].get(k, 0), v) for k, v in r["rejected_any"].items()],
                    ("reason", "first", "any"))
    d_all, d_acc = r["diversity"]["generated"], r["diversity"]["accepted"]
    lines += ["", "## Diversity", ""] + _table([
        ("distinct-1 (persona turns)", _rate(d_all["distinct_1"]), _rate(d_acc["distinct_1"])),
        ("distinct-2 (persona turns)", _rate(d_all["distinct_2"]), _rate(d_acc["distinct_2"])),
        ("topics covered", f"{d_all['topics_covered']}/{d_all['topics_planned']}",
         f"{d_acc['topics_covered']}/{d_acc['topics_planned']}")], ("", "generated", "accepted"))
    v_all, v_acc = r["voice"]["generated"], r["voice"]["accepted"]
    lines += ["", "## Voice (the evaluation's bible rubric, per persona turn)", ""] + _table([
        (k, _rate(v_all.get(k)), _rate(v_acc.get(k))) for k in ("marker_rate", "taboo_rate", "length_compliance",
                                                                 "language_rate", "adherence")] +
        [("persona turns", v_all["n"], v_acc["n"])], ("", "generated", "accepted"))
    s = r["spend"]
    lines += ["", "## Cost", "", f"{s['requests']:,} requests, {s['tokens']:,} tokens (prompt + completion) over "
              f"every run on this folder; budget {s['max_requests'] or 'unlimited'} requests, "
              f"{s['max_tokens'] or 'unlimited'} tokens.", ""]
    if r.get("lengths_png"):
        lines += ["## Lengths", "", "![lengths](lengths.png)", ""]
    if r["examples"]["accepted"]:
        lines += ["## Some accepted dialogues", ""]
        for ex in r["examples"]["accepted"]:
            lines.append(f"- {ex['id']}: " + " / ".join(f"{m['role'][0]}: {m['content'][:120]!r}" for m in ex["messages"][:4]))
        lines.append("")
    if r["examples"]["rejected"]:
        lines += ["## Some rejected dialogues", ""]
        for ex in r["examples"]["rejected"]:
            said = [m["content"] for m in ex["messages"] if m["role"] == "assistant"]
            lines.append(f"- {ex['id']}: {ex['reason']}" + (f"; the persona said {said[0][:160]!r}" if said else ""))
        lines.append("")
    return "\n".join(lines)
