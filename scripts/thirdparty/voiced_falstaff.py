"""The Falstaff conversations in which every one of his answers carries his voice: a curated cut.

    python scripts/thirdparty/voiced_falstaff.py     # writes data/falstaff/voiced.jsonl

Half of Falstaff's 412 lines in dialogues.jsonl carry none of the bible's markers ("Mine, Hal,
mine.", "My lord?"): the data itself scores 0.82 adherence on his bible, the prompt-only baseline
0.73, so imitating it perfectly gains at most +0.09. This keeps, in the file's order, the
conversations whose every Falstaff answer carries at least one marker (69 of 200), which is the
curation a user does when the data should teach a voice. Selected on the same markers the rubric
counts: a gain measured after training on it is partly the selection's (docs/measured-runs.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from recipe_runner.data.bible import load_bible
from recipe_runner.evaluate.persona_score import PersonaRubric, score_answer

HERE = Path(__file__).resolve().parents[2] / "data" / "falstaff"


def voiced(row: dict, rubric: PersonaRubric) -> bool:
    return all(score_answer(m["content"], rubric).markers for m in row["messages"] if m["role"] == "assistant")


def main() -> None:
    rubric = PersonaRubric.from_bible(load_bible(str(HERE / "bible.yaml")))
    rows = [json.loads(line) for line in (HERE / "dialogues.jsonl").read_text(encoding="utf-8").splitlines()]
    kept = [r for r in rows if voiced(r, rubric)]
    with open(HERE / "voiced.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
    print(f"data/falstaff/voiced.jsonl: {len(kept)} of {len(rows)} conversations")


if __name__ == "__main__":
    main()
