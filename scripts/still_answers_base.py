#!/usr/bin/env python
"""How many still-answers questions the base model gets right: calibrates data/eval/still_answers.jsonl.

    python scripts/still_answers_base.py                 # accuracy overall, per language, per kind
    python scripts/still_answers_base.py --show wrong    # also every question it got wrong, with its answer
    python scripts/still_answers_base.py --adapter outputs/runs/R/T/adapters/best   # tuned vs base, paired

With --adapter the same questions are answered by the base and by base + adapter (peft, adapter
switched off for the base), and the change is a paired 95 % interval over all the questions: a run
checks a cut of them (eval.max_still_answers), this checks every one.

The set exists to catch a fine-tune destroying knowledge the base model has, so the base model must
get a fair share right (target 40-75 %): too hard and there is nothing to lose, too easy and a
wrong answer is no signal. Greedy decoding, no system prompt, the run's own lengths and batches
(eval.still_answers_tokens, eval.still_answers_batch), float32 on the CPU: the same answers on every run.

Measured (129 questions, 2 CPU cores, 24 new tokens): 51.9 % right [43.4, 60.5]; English 67.1 %
[56.1, 76.8], Russian 25.5 % [12.8, 38.3] (nearly all of it arithmetic: the 135M model echoes other
Russian questions back; at 32 tokens 54.3 %, arithmetic 11/14, everything else 1/33). ~50-70 s on 2
idle cores (2.5 s of it loading), twice that with --adapter; with other jobs on the same cores torch's
threads contend and the same run took up to 10 min.
"""

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from recipe_runner.evaluate.answer_match import accuracy_items, load_still_answers  # noqa: E402
from recipe_runner.config.schema import EvalConfig  # noqa: E402
from recipe_runner.evaluate.intervals import interval, paired_gain  # noqa: E402
from recipe_runner.model.embedded import resolve_model_path  # noqa: E402


def answer_all(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out += [tok.decode(ids, skip_special_tokens=True).strip() for ids in gen[:, enc["input_ids"].shape[1]:]]
    return out


def line(name: str, items: list[float], base: list[float] | None = None) -> str:
    """One group's accuracy with its interval; with an adapter, the base's on the same questions beside it."""
    mean, low, high = interval(items)
    out = f"  {name:<14} {mean:6.1%}  [{low:5.1%}, {high:5.1%}]  n={len(items)}"
    return out + (f"   base {sum(base) / len(base):6.1%}" if base else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", default="data/eval/still_answers.jsonl")
    ap.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    ap.add_argument("--cache-dir", default="~/.cache/recipe-runner")
    ap.add_argument("--max-new-tokens", type=int, default=EvalConfig.still_answers_tokens)
    ap.add_argument("--batch-size", type=int, default=EvalConfig.still_answers_batch)
    ap.add_argument("--adapter", help="a LoRA adapter folder: also answer with it and report the paired change")
    ap.add_argument("--show", choices=["none", "wrong", "all"], default="none")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    questions = load_still_answers(args.questions, "--questions")
    path = resolve_model_path(args.model, args.cache_dir)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    loaded = time.perf_counter()
    prompts = [q["prompt"] for q in questions]
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).eval()
        with model.disable_adapter():
            base_items = accuracy_items(answer_all(model, tok, prompts, args.max_new_tokens, args.batch_size), questions)
    answers = answer_all(model, tok, prompts, args.max_new_tokens, args.batch_size)
    items = accuracy_items(answers, questions)
    end = time.perf_counter()

    by_lang, by_kind = defaultdict(list), defaultdict(list)  # group -> indices of its questions
    for i, q in enumerate(questions):
        by_lang[q.get("lang", "?")].append(i)
        by_kind[(q.get("lang", "?"), q.get("kind", "?"))].append(i)
        by_kind[("all", q.get("kind", "?"))].append(i)

    def group(label: str, idx: list[int]) -> str:
        return line(label, [items[i] for i in idx], [base_items[i] for i in idx] if args.adapter else None)
    if args.show != "none":
        for i, (q, a, x) in enumerate(zip(questions, answers, items)):
            if args.show == "all" or not x:
                was = ("" if not args.adapter else "  (base: right)" if base_items[i] else "  (base: wrong)")
                print(f"{'ok ' if x else 'NO '} {q.get('id', '')}: {q['prompt']}  ->  {' '.join(a.split())[:140]}{was}")
        print()
    print(f"{args.model}{' + ' + args.adapter if args.adapter else ''}: {len(questions)} questions, greedy, "
          f"{args.max_new_tokens} new tokens")
    print(line("overall", items))
    if args.adapter:
        print(line("base", base_items))
        change, low, high = paired_gain(items, base_items)
        print(f"  {'change':<12} {change:+6.1%}  [{low:+5.1%}, {high:+5.1%}]  (adapter - base, paired)")
    for lang in sorted(by_lang):
        print(group(lang, by_lang[lang]))
    for (lang, kind) in sorted(by_kind, key=lambda k: (k[0] != "all", k)):
        print(group(f"{lang}/{kind}", by_kind[(lang, kind)]))
    print(f"wall time {end - start:.1f} s: model load {loaded - start:.1f} s, generation {end - loaded:.1f} s "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
