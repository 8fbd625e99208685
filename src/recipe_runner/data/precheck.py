"""The early data check: every data file read once before the training stack, a tokenizer or a model loads.

`runner.run` calls `check_data` for stage=prepare and stage=train right after the config is
validated, so a malformed corpus line (`FILE:2: broken JSON ...`) is reported a few seconds
after the command instead of after Lightning's and transformers' imports, the tokenizer and
the model conversion. It reads through the same readers and normalisers as prepare (`iter_source`), so
the message is the one prepare would give, and keeps nothing.

Reading a large corpus twice is avoided where the data cache allows: a source whose clean
entry is already complete was read without error with these very bytes and settings, and is
skipped. What cannot be checked before the tokenizer is left to prepare: where a `max_examples`
cut falls once plain text is chunked by tokens (the check stops at the first text example of a
cut source), and hub datasets (the network).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from recipe_runner.config.schema import Format, Stage
from recipe_runner.data.cache import DataCache, clean_key, source_hash
from recipe_runner.data.corpus import iter_source, plain_text
from recipe_runner.data.readers import is_hub_name, read_jsonl

EVAL_FILES = (("ordinary_prompts", "prompt"), ("persona_prompts", "prompt"), ("dialogues", "turns"),
              ("still_answers", "prompt"))
BAR_BYTES = 64 * 2**20  # sources this big show a progress bar while checked (~1 s per 50 MB of chat JSONL)


def check_data(cfg: DictConfig, stage: Stage) -> list[str]:
    """Raise the first data error prepare (and, for stage=train, the evaluation) would raise reading
    the recipe's files; return the names of the sources read (those not skipped)."""
    cache = DataCache(Path(cfg.paths.cache_dir) / "data" if cfg.data.cache else None)
    read = []
    for name, src in cfg.data.sources.items():
        if Format(src.format) is Format.hf_dataset and is_hub_name(src.path):
            continue
        if not plain_text(src) and cache.done("clean", clean_key(src, cfg, source_hash(src), None)):
            continue
        check_source(name, src)
        read.append(name)
    if stage is Stage.train:  # EvalSets.load reads these after prepare; small files, read whole
        for key, field_name in EVAL_FILES:
            if cfg.eval[key]:
                read_jsonl(cfg.eval[key], f"eval.{key}", field_name)
    return read


def check_source(name: str, src) -> None:
    """One source through iter_source, unchunked: its reader's and normaliser's errors, or nothing."""
    cut = src.max_examples is not None
    examples = iter_source(name, src, None, chunk=False)
    path = Path(src.path)
    size = path.stat().st_size if path.is_file() else 0
    if size >= BAR_BYTES:
        from tqdm.auto import tqdm

        examples = tqdm(examples, desc=f"checking {name}", unit=" ex", mininterval=2, dynamic_ncols=True)
    for example in examples:
        if cut and example["text"]:  # prepare cuts text into windows of tokens and counts those:
            break                    # where its max_examples cut falls takes the tokenizer
