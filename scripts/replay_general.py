#!/usr/bin/env python
"""Build the general (anti-forgetting) corpus: the base model's own answers to ordinary prompts.

    python scripts/replay_general.py            # data/general/prompts.jsonl -> data/general/replay.jsonl

Training on the base model's own greedy answers keeps its general behaviour where it was
(self-distillation) instead of pulling it toward another model's style. Greedy decoding on
the CPU makes the file reproducible; it is committed so runs never pay for generation
(measured on an earlier 438-prompt file: ~5 min on 2 cores at <=160 new tokens, ~0.7 s per prompt;
the 1,160 prompts now in data/general/prompts.jsonl take ~13 min at that rate).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from recipe_runner.model.embedded import resolve_model_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="data/general/prompts.jsonl")
    ap.add_argument("--out", default="data/general/replay.jsonl")
    ap.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    ap.add_argument("--cache-dir", default="~/.cache/recipe-runner")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(args.model, args.cache_dir)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [json.loads(line) for line in open(args.prompts, encoding="utf-8") if line.strip()]
    done = set()
    if Path(args.out).exists():  # resumable: answers already written are kept
        done = {json.loads(line)["id"] for line in open(args.out, encoding="utf-8") if line.strip()}
    prompts = [p for p in prompts if p["id"] not in done]
    with open(args.out, "a", encoding="utf-8") as out:
        for i in tqdm(range(0, len(prompts), args.batch_size), desc="replaying prompts"):
            chunk = prompts[i : i + args.batch_size]
            texts = [tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                             add_generation_prompt=True) for p in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            for p, ids in zip(chunk, gen[:, enc["input_ids"].shape[1]:]):
                answer = tok.decode(ids, skip_special_tokens=True).strip()
                if tok.eos_token_id not in ids.tolist():  # cut off by max_new_tokens:
                    cut = max(answer.rfind(c) for c in ".!?\n")  # keep whole sentences only
                    answer = answer[: cut + 1].strip() if cut > 0 else ""
                if not answer:
                    continue
                record = {"id": p["id"], "messages": [{"role": "user", "content": p["prompt"]},
                                                      {"role": "assistant", "content": answer}]}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
