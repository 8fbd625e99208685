"""How the evaluation's decoding shapes the persona scores: the same answers' checks under three decodings.

    python scripts/decoding_check.py ADAPTER_FOLDER [--prompts 12] [--start 0] [--tokens 32]
        [--only reply-only] [KEY=VALUE ...]

For the prompt-only baseline (base model, whole bible as system prompt) and the tuned adapter
(training system prompt), greedy answers to the recipe's held-out persona prompts under
  prompt+reply 1.2   transformers' repetition_penalty=1.2: every token already in the input is
                     penalised, the system prompt's name and markers included (the old evaluation)
  reply-only 1.2     the penalty over the reply's own tokens (the evaluation now)
  none 1.0           plain greedy
and prints adherence, marker rate, taboo rate, answers naming the persona, and looping answers
(a 3-word sequence repeated inside one answer: what the penalty is for). Trailing KEY=VALUE are
Hydra overrides of the default recipe (e.g. recipe=eleanor_diarist_cpu).

Out of sample: the CPU recipes evaluate the first `eval.max_prompts` (12) persona prompts, and
those are the prompts the CPU cut's settings were chosen on. `--start 12 --prompts 28
--only reply-only` scores the rest of the file, which no tuning saw, with the evaluation's own
decoding, and prints the tuned side's gain over the baseline with a paired 95 % interval.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def loops(text: str) -> bool:
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(grams) != len(set(grams))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--start", type=int, default=0, help="first prompt (0-based) of the slice scored")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--only", default=None, help="one decoding: prompt+reply, reply-only or none")
    args, overrides = ap.parse_known_args()

    import torch
    from hydra import compose, initialize_config_dir
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe_runner.model.embedded import resolve_model_path
    from recipe_runner.evaluate.checker import read_jsonl, user
    from recipe_runner.data.chat_format import stop_ids
    from recipe_runner.evaluate.generation import evaluating, render
    from recipe_runner.evaluate.intervals import interval, paired_gain
    from recipe_runner.evaluate.persona_score import PersonaRubric, score_answer, score_answers
    from recipe_runner.config.schema import register
    from recipe_runner.data.bible import load_bible

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=overrides)
    path = resolve_model_path(cfg.model.name_or_path, cfg.paths.cache_dir)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), args.adapter)
    bible = load_bible(cfg.template.persona.bible)
    rubric = PersonaRubric.from_bible(bible)
    prompts = read_jsonl(cfg.eval.persona_prompts, "eval.persona_prompts", "prompt")[args.start: args.start + args.prompts]
    sides = {"baseline": (bible.whole_prompt, False),
             "tuned": (bible.system_prompt(cfg.template.persona.system_prompt), True)}
    print(f"{len(prompts)} held-out prompts (from #{args.start}), {args.tokens} new tokens, greedy; adapter {args.adapter}")
    print(f"| side | decoding | adherence | markers | taboos | names {bible.name} | loops |")
    print("|---|---|---:|---:|---:|---:|---:|")
    per_prompt = {}  # (side, decoding) -> adherence per prompt, for the paired gain
    for side, (system, adapter) in sides.items():
        texts = [render(tok, user(p, system)) for p in prompts]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        for label, penalty, reply_only in (("prompt+reply 1.2", 1.2, False), ("reply-only 1.2", 1.2, True),
                                           ("none 1.0", 1.0, False)):
            if args.only and not label.startswith(args.only):
                continue
            from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

            kwargs = {"repetition_penalty": penalty} if not reply_only else {"logits_processor": LogitsProcessorList(
                [RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=enc["input_ids"].shape[1])])}
            with evaluating(model, adapter):
                out = model.generate(**enc, max_new_tokens=args.tokens, do_sample=False, eos_token_id=stop_ids(tok),
                                     pad_token_id=tok.pad_token_id or tok.eos_token_id, **kwargs)
            answers = [a.strip() for a in tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
            s = score_answers(answers, rubric)
            per_prompt[side, label] = [score_answer(a, rubric).adherence for a in answers]
            ci = interval(per_prompt[side, label])
            named = sum(bool(re.search(rf"\b{re.escape(bible.name)}\b", a)) for a in answers)
            print(f"| {side} | {label} | {s['adherence']:.3f} [{ci[1]:.3f}, {ci[2]:.3f}] | {s['marker_rate']:.2f} | {s['taboo_rate']:.2f} | "
                  f"{named} / {len(answers)} | {sum(map(loops, answers))} / {len(answers)} |")
    for (side, label), tuned in per_prompt.items():
        if side == "tuned" and ("baseline", label) in per_prompt:
            g = paired_gain(tuned, per_prompt["baseline", label])
            print(f"gain of the tuned side, {label}: {g[0]:+.3f} [{g[1]:+.3f}, {g[2]:+.3f}] (paired 95 % interval)")


if __name__ == "__main__":
    main()
