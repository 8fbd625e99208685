"""The data manifest: what went into a mix, so the same recipe and seed can be checked byte for byte.

Source file hashes, the data/template settings, the tokenizer, the counts per source, and a
hash over the token ids of the final training mix and held-out sets, in order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from recipe_runner.data.hashing import file_hash, ids_hash
from recipe_runner.data.mixing import Mix


def build_manifest(cfg, mix: Mix, model_path: str) -> dict:
    manifest = {
        "sources": {n: {"path": s.path, "sha256": mix.sources[n].sha256, "cache": mix.sources[n].cache}
                    for n, s in cfg.data.sources.items()},
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "template": OmegaConf.to_container(cfg.template, resolve=True),
        "bible_sha256": file_hash(Path(cfg.template.persona.bible)) if cfg.template.persona.bible else None,
        "tokenizer": cfg.model.name_or_path,
        "tokenizer_files_sha256": file_hash(Path(model_path) / "tokenizer.json")
        if (Path(model_path) / "tokenizer.json").exists() else None,
        "counts": [asdict(r) for r in mix.rows],
        "train_mix_sha256": ids_hash([mix.train]),  # epoch 0; later epochs follow from data.mix.seed
        "heldout_sha256": ids_hash([mix.val[n] for n in sorted(mix.val)]),
    }
    # cache "reused" flags differ between a cold and a warm prepare of the same data: not hashed
    hashed = {**manifest, "sources": {n: {k: v for k, v in s.items() if k != "cache"} for n, s in manifest["sources"].items()}}
    manifest["manifest_sha256"] = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()
    return manifest


def write_data_files(run_dir: Path, mix: Mix, manifest: dict) -> None:
    """manifest.json and heldout/<source>.jsonl (the held-out examples as they were read)."""
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    (run_dir / "heldout").mkdir(exist_ok=True)
    for name, ds in mix.val.items():
        with open(run_dir / "heldout" / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in ds.select_columns(["messages", "text"]):
                fh.write(json.dumps(held_out_record(row), ensure_ascii=False) + "\n")


def held_out_record(row: dict) -> dict:
    """As read: chat -> {"messages"}, plain text -> {"text"}; `train` only where it is false."""
    if not row["messages"]:
        return {"text": row["text"]}
    return {"messages": [{"role": m["role"], "content": m["content"], **({} if m["train"] else {"train": False})}
                         for m in row["messages"]]}
