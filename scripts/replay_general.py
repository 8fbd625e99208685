#!/usr/bin/env python
"""A whole general source in the base model's own words, with the sidecar that says so.

    python scripts/replay_general.py                           # data/general/prompts.jsonl -> data/general/replay.jsonl
    python scripts/replay_general.py --verify 64               # regenerate 64 rows of replay.jsonl; sidecar if all match
    python scripts/replay_general.py --verify 64 --out data/eleanor/general.alpaca.jsonl --format alpaca
    python scripts/replay_general.py --prompts my.jsonl --out my_replay.jsonl model.name_or_path=/path/to/base

The same mechanism a run uses for a general source with `answers: base` (data/self_distill.py):
the same settings key (base weights, quantization, dtype, chat template, data.rewrite), the same
store in cache_dir/rewrite (so this is resumable, and a run reuses what it wrote). A run
regenerates only the rows it draws; this writes every row once, for a corpus to ship. The
sidecar `<out>.answers.json` holds the settings key: a run whose key matches uses the file's
answers as they are (the bundled replay corpus costs the default recipe nothing).

Arguments after the options are Hydra overrides of the default recipe (model.*, data.rewrite.*).
Greedy on the CPU, float32: ~0.7-1.3 s per row on 2 cores at <= 160 new tokens (batch 32).
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from recipe_runner.config.schema import register

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return hydra_compose("config", overrides=overrides)


def rows_of(path: Path) -> list[dict]:
    """{"id", "prompt"} lines (a prompts file) or {"id", "messages"} lines (a chat file)."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        messages = r.get("messages") or [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": ""}]
        rows.append({"id": r.get("id", f"row-{n}"), "source": "general", "text": "", "messages": messages})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", default="data/general/prompts.jsonl")
    ap.add_argument("--out", default="data/general/replay.jsonl")
    ap.add_argument("--verify", type=int, default=0, help="regenerate N rows of --out and compare instead")
    ap.add_argument("--format", default="chat_jsonl", help="--out's format, for --verify (data.sources.*.format)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from recipe_runner.data.self_distill import Rewriter, sidecar_of
    from recipe_runner.model.embedded import resolve_model_path
    from recipe_runner.model.qlora import uses_gpu
    from recipe_runner.model.safe_load import CODE

    cfg = compose(args.overrides)
    path = resolve_model_path(cfg.model.name_or_path, cfg.paths.cache_dir)
    tok = AutoTokenizer.from_pretrained(path, revision=cfg.model.revision, **CODE)
    out = Path(args.out)
    store = None if args.verify else Path(cfg.paths.cache_dir).expanduser() / "rewrite"
    rewriter = Rewriter(cfg, tok, path, uses_gpu(cfg.train.accelerator), store)
    sidecar = {"settings_key": rewriter.settings.key, "settings": rewriter.settings.parts,
               "model": cfg.model.name_or_path}
    if args.verify:
        from omegaconf import OmegaConf

        from recipe_runner.config.schema import SourceConfig
        from recipe_runner.data.corpus import iter_source

        src = OmegaConf.structured(SourceConfig(path=str(out), format=args.format, role="general"))
        rows = [{**ex, "id": f"row-{i}"} for i, ex in enumerate(iter_source("general", src, tok))]
        step = max(len(rows) // args.verify, 1)
        sample = rows[::step][: args.verify]
        fresh = rewriter.rewrite("general", [dict(r) for r in sample])  # no file: its sidecar is not asked
        differ = [r["id"] for r, f in zip(sample, fresh) if r["messages"] != f["messages"]]
        print(f"{len(sample) - len(differ)}/{len(sample)} regenerated rows equal {out}'s answers")
        if differ:
            sys.exit(f"differ: {differ[:10]}; no sidecar written")
    else:
        rows = rows_of(Path(args.prompts))
        fresh = rewriter.rewrite("general", rows)
        kept = [{"id": r["id"], "messages": f["messages"]} for r, f in zip(rows, fresh) if all(
            m["content"] for m in f["messages"])]  # a prompt the base answered with nothing is left out
        out.write_text("".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept), encoding="utf-8")
        print(f"{len(kept)} of {len(rows)} rows written to {out}: {rewriter.tallies['general'].as_dict()}")
    sidecar_of(out).write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    print(f"sidecar {sidecar_of(out)} (settings key {rewriter.settings.key[:16]})")


if __name__ == "__main__":
    main()
