"""Why does (or doesn't) the niche loss move? The numbers behind docs/diagnosis.md, for any recipe.

    python scripts/diagnose_niche.py [KEY=VALUE ...]        # Hydra overrides, e.g. recipe=eleanor_diarist_cpu

Prints, for the recipe's epoch-0 mix (no training):
  - tokens and supervised (loss-carrying) tokens per role, and the niche share of the gradient
    (the loss is a mean over supervised tokens, so a role's share of the step is its share of them);
  - optimizer steps per epoch and in the run, niche supervised tokens per step and in the run;
  - the learning-rate schedule those steps get (warm-up, cosine to 10 %);
  - whether the held-out niche set looks like the training niche set: dialogues, user turns,
    tokens, and the base model's loss on each (a held-out set much harder than training would
    hide learning).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe_runner.model.embedded import resolve_model_path
    from recipe_runner.data.prepare import prepare_data
    from recipe_runner.config.schema import Role, drop_null_sources, register
    from recipe_runner.data.templates import IGNORE

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=sys.argv[1:])
    drop_null_sources(cfg)
    path = resolve_model_path(cfg.model.name_or_path, cfg.paths.cache_dir)
    tok = AutoTokenizer.from_pretrained(path)
    mix = prepare_data(cfg, tok)
    roles = {n: Role(s.role).value for n, s in cfg.data.sources.items()}
    train = mix.train
    tokens, supervised = {}, {}
    for ids, labels, source in zip(train["input_ids"], train["labels"], train["source"]):
        role = roles[source]
        tokens[role] = tokens.get(role, 0) + len(ids)
        supervised[role] = supervised.get(role, 0) + sum(x != IGNORE for x in labels[1:])
    t = cfg.train
    per_step = t.batch_size * t.grad_accum * cfg.data.max_length  # packed rows: an upper bound
    steps = math.ceil(sum(tokens.values()) / per_step)
    total = steps * t.max_epochs
    niche_sup, all_sup = supervised.get("niche", 0), sum(supervised.values())
    print(f"recipe {cfg.name}: general:niche = {mix.ratio:.2f}:1 in tokens, lr {t.lr:g}, LoRA r={cfg.lora.r} "
          f"alpha={cfg.lora.alpha}, quant={getattr(cfg.model.quant, 'value', cfg.model.quant)}")
    print("| role | tokens / epoch | supervised / epoch | share of the gradient |")
    print("|---|---:|---:|---:|")
    for role in tokens:
        print(f"| {role} | {tokens[role]:,} | {supervised[role]:,} | {supervised[role] / all_sup:.1%} |")
    print(f"optimizer steps: ~{steps} per epoch (<= {per_step:,} tokens each), ~{total} in {t.max_epochs} epochs")
    print(f"niche supervised tokens: ~{niche_sup / max(steps, 1):,.0f} per step, {niche_sup * t.max_epochs:,} in the run")
    warm = int(total * t.warmup_ratio)
    lrs = [t.lr * ((s + 1) / (warm + 1) if s < warm else
                   0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min((s - warm) / max(total - warm, 1), 1.0))))
           for s in range(total)]
    print(f"lr schedule: {warm} warm-up steps, peak {max(lrs):.2g}, mean {np.mean(lrs):.2g}, last {lrs[-1]:.2g}; "
          f"lr x steps = {sum(lrs):.3g}")

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def stats(rows) -> tuple[int, float, float, float]:
        losses, n = [], 0
        for ids, labels in zip(rows["input_ids"], rows["labels"]):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            keep = target != IGNORE
            losses.append(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item())
            n += int(keep.sum())
        return len(rows["input_ids"]), float(np.mean([len(x) for x in rows["input_ids"]])), sum(losses) / n, n

    print("| niche set | dialogues | mean tokens | base model loss (nats/token) | supervised tokens |")
    print("|---|---:|---:|---:|---:|")
    for name, role in roles.items():
        if role != "niche":
            continue
        rows = train.filter(lambda s: s == name, input_columns="source").select_columns(["input_ids", "labels"])[:]
        for label, part in (("train", rows), ("held out", mix.val[name][:])):
            n, mean_len, loss, sup = stats(part)
            print(f"| {name} {label} | {n} | {mean_len:.0f} | {loss:.3f} | {sup:,} |")


if __name__ == "__main__":
    main()
