"""How the evaluation's decoding shapes the persona scores: the same answers' checks under three decodings.

    python bench/decoding_check.py ADAPTER_FOLDER [--prompts 12] [--tokens 32] [KEY=VALUE ...]

For the prompt-only baseline (base model, whole bible as system prompt) and the tuned adapter
(training system prompt), greedy answers to the recipe's held-out persona prompts under
  prompt+reply 1.2   transformers' repetition_penalty=1.2: every token already in the input is
                     penalised, the system prompt's name and markers included (the old evaluation)
  reply-only 1.2     the penalty over the reply's own tokens (the evaluation now)
  none 1.0           plain greedy
and prints adherence, marker rate, taboo rate, answers naming the persona, and looping answers
(a 3-word sequence repeated inside one answer: what the penalty is for). Trailing KEY=VALUE are
Hydra overrides of the default recipe (e.g. recipe=eleanor_diarist_cpu).
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
    ap.add_argument("--tokens", type=int, default=32)
    args, overrides = ap.parse_known_args()

    import torch
    from hydra import compose, initialize_config_dir
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe_runner.embedded import resolve_model_path
    from recipe_runner.evaluation import bible_prompt, read_jsonl, user
    from recipe_runner.generation import evaluating, render, stop_ids
    from recipe_runner.persona_score import PersonaRubric, score_answers
    from recipe_runner.schema import register
    from recipe_runner.templates import load_bible, render_persona

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=overrides)
    path = resolve_model_path(cfg.model.name_or_path, cfg.paths.cache_dir)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), args.adapter)
    bible = load_bible(cfg.template.persona.bible)
    rubric = PersonaRubric.from_bible(bible)
    prompts = read_jsonl(cfg.eval.persona_prompts, "eval.persona_prompts", "prompt")[: args.prompts]
    sides = {"baseline": (bible_prompt(bible), False), "tuned": (render_persona(cfg.template), True)}
    print(f"{len(prompts)} held-out prompts, {args.tokens} new tokens, greedy; adapter {args.adapter}")
    print(f"| side | decoding | adherence | markers | taboos | names {bible['name']} | loops |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for side, (system, adapter) in sides.items():
        texts = [render(tok, user(p, system)) for p in prompts]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        for label, penalty, reply_only in (("prompt+reply 1.2", 1.2, False), ("reply-only 1.2", 1.2, True),
                                           ("none 1.0", 1.0, False)):
            from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

            kwargs = {"repetition_penalty": penalty} if not reply_only else {"logits_processor": LogitsProcessorList(
                [RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=enc["input_ids"].shape[1])])}
            with evaluating(model, adapter):
                out = model.generate(**enc, max_new_tokens=args.tokens, do_sample=False, eos_token_id=stop_ids(tok),
                                     pad_token_id=tok.pad_token_id or tok.eos_token_id, **kwargs)
            answers = [a.strip() for a in tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
            s = score_answers(answers, rubric)
            named = sum(bool(re.search(rf"\b{re.escape(bible['name'])}\b", a)) for a in answers)
            print(f"| {side} | {label} | {s['adherence']:.3f} | {s['marker_rate']:.2f} | {s['taboo_rate']:.2f} | "
                  f"{named} / {len(answers)} | {sum(map(loops, answers))} / {len(answers)} |")


if __name__ == "__main__":
    main()
