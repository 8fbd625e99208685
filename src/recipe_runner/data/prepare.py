"""Prepare: sources -> cleaned Arrow -> tokenized Arrow -> held-out split -> token-exact mix.

Each source streams through two cached stages, so a large corpus is never a Python list:
1. clean: read records one at a time, normalise, drop by the per-example filters, write the
   survivors to an Arrow file in batches of 1,000 with their content hash and LSH band keys;
   then drop exact and near duplicates with numpy over those keys (a keep-index file).
2. tokenize: template and tokenize the kept rows a batch at a time into a second Arrow file,
   then drop by min/max tokens.
Both are memory-mapped `datasets.Dataset`s afterwards; only the drawn training mix is ever
read into lists. Everything here runs before the model weights are loaded.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, concatenate_datasets, disable_progress_bars, enable_progress_bars
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from recipe_runner.data.cache import TOKEN_BOUNDS, VERSION, DataCache, clean_key, key_of, source_hash
from recipe_runner.data.cleaning import Cleaner, token_bounds
from recipe_runner.data.corpus import BadLines, iter_source
from recipe_runner.errors import RecipeError
from recipe_runner.data.mixing import Mix, mix
from recipe_runner.data.source_data import SourceData
from recipe_runner.config.schema import Answers, Role, SystemPrompt, TemplateConfig, TrainOn
from recipe_runner.data.bible import persona_prompt
from recipe_runner.model.embedded import resolve_model_path
from recipe_runner.model.qlora import uses_gpu
from recipe_runner.data.chat_format import apply_named_template
from recipe_runner.data.self_distill import Rewriter
from recipe_runner.data.templates import Encoder, preflight

BATCH = 1000  # examples per Arrow record batch: ~0.5 MB of text, bounded memory at any corpus size

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("train", pa.bool_())])
EXAMPLE = pa.schema([("source", pa.string()), ("messages", pa.list_(MESSAGE)), ("text", pa.string())])
ENCODED = pa.schema(list(EXAMPLE) + [(c, pa.list_(pa.int32())) for c in ("input_ids", "labels")]
                    + [(c, pa.int32()) for c in ("n_tokens", "n_supervised", "n_turns", "n_eot")])


def tokenizer_hash(tokenizer) -> str:
    return key_of(tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else
                  tokenizer.name_or_path, tokenizer.chat_template)


def write_batches(path: Path, schema: pa.Schema, batches) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for rows in batches:
            writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))


def as_example(row: dict) -> dict:
    return {"source": row["source"], "messages": row["messages"], "text": row["text"]}


def build_clean(folder: Path, name: str, src, cfg, tokenizer) -> None:
    """Stage 1: examples.arrow (per-example survivors), keep.npy, bands.npy, stats.json."""
    cleaner, bad = Cleaner(cfg.data.clean), BadLines()
    hashes, bands, read = [], [], 0

    def batches():
        nonlocal read
        batch = []
        stream = iter_source(name, src, tokenizer, dict(cfg.data.placeholders), bad)
        for ex in tqdm(stream, desc=f"reading {name}", unit=" ex", mininterval=2, dynamic_ncols=True):
            read += 1
            if cleaner.keep(ex):
                batch.append(ex)
            if len(batch) == BATCH:
                yield keyed(batch)
                batch = []
        if batch:
            yield keyed(batch)

    def keyed(batch):
        h, b = cleaner.keys(batch)
        hashes.append(h)
        if b is not None:
            bands.append(b)
        return [as_example(e) for e in batch]

    write_batches(folder / "examples.arrow", EXAMPLE, batches())
    ds = Dataset.from_file(str(folder / "examples.arrow"))
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    all_bands = np.concatenate(bands) if bands else None
    keep = np.flatnonzero(cleaner.dedup(all_hashes, all_bands, lambda i: as_example(ds[i])))
    if not len(keep):
        raise RecipeError(f"data.clean: every example of source {name!r} was dropped: {cleaner.counts}")
    np.save(folder / "keep.npy", keep)
    if all_bands is not None:
        np.save(folder / "bands.npy", all_bands[keep])
    (folder / "stats.json").write_text(json.dumps(
        {"read": read, "bad_lines": bad.count, "cleaned": cleaner.counts, "samples": cleaner.samples},
        ensure_ascii=False))


def column(ds: Dataset, name: str) -> np.ndarray:
    """One numeric column as numpy in a single Arrow read (iterating a Column formats row by row:
    23 s for 300k rows)."""
    return ds.select_columns([name]).with_format("arrow")[:].column(name).to_numpy()


def encoded_files(folder: Path) -> Dataset:
    files = sorted(folder.glob("encoded*.arrow"))  # one file, or one per worker process
    return concatenate_datasets([Dataset.from_file(str(f)) for f in files])


def workers(n_rows: int, setting: int | None) -> int:
    """Processes for tokenizing: jinja rendering is pure Python, so big sources use every core;
    small ones stay in-process (starting a worker and shipping it the tokenizer costs ~2 s)."""
    if n_rows < 20_000:
        return 1
    return max(1, setting or min(os.cpu_count() or 1, 8))


def build_tokens(folder: Path, name: str, cleaned: Dataset, encoder: Encoder, cfg) -> None:
    """Stage 2: encoded*.arrow (all cleaned rows, tokenized), keep.npy (within token bounds), stats.json."""
    def encode(cols: dict) -> dict:
        return encoder.batch([as_example(dict(zip(cols, vals))) for vals in zip(*cols.values())])

    n_proc = workers(len(cleaned), cfg.data.num_proc)
    if n_proc > 1:  # forked workers: the Rust tokenizer's own threads would deadlock-guard and warn
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    quiet = not sys.stderr.isatty()  # in a log file datasets' bar redraws per batch: 1,000 lines for 1M rows
    if quiet:
        disable_progress_bars()
    try:
        cleaned.map(encode, batched=True, batch_size=BATCH, writer_batch_size=BATCH, num_proc=n_proc,
                    features=Features.from_arrow_schema(ENCODED), cache_file_name=str(folder / "encoded.arrow"),
                    load_from_cache_file=False, desc=f"tokenizing {name}")
    finally:
        if quiet:
            enable_progress_bars()
    if quiet:
        print(f"tokenized {name}: {len(cleaned):,} examples in {n_proc} process(es)", file=sys.stderr)
    ds = encoded_files(folder)
    n_tokens = column(ds, "n_tokens")
    keep, dropped = token_bounds(n_tokens, cfg.data.clean, cfg.data.max_length)
    if not keep.any():
        raise RecipeError(
            f"data.max_length={cfg.data.max_length} / data.clean.min_tokens={cfg.data.clean.min_tokens}: no example "
            f"of source {name!r} fits (lengths {int(n_tokens.min())}-{int(n_tokens.max())} tokens); "
            "raise data.max_length or shorten the system prompt")
    cols = {c: column(ds, c)[keep] for c in ("n_supervised", "n_turns", "n_eot")}
    preflight(cols, encoder.eot, TrainOn(cfg.template.train_on), name)
    np.save(folder / "keep.npy", np.flatnonzero(keep))
    samples = {k: [as_example(ds[int(i)]) for i in idx[: cfg.data.clean.keep_samples]] for k, idx in dropped.items()}
    (folder / "stats.json").write_text(json.dumps(
        {"cleaned": {k: int(len(v)) for k, v in dropped.items()}, "samples": samples}, ensure_ascii=False))


def prepare_source(name: str, src, cfg, tokenizer, encoder: Encoder, cache: DataCache, tok_hash: str) -> SourceData:
    sha = source_hash(src)
    clean_cfg = OmegaConf.to_container(cfg.data.clean, resolve=True)
    by_tokens = {k: clean_cfg[k] for k in TOKEN_BOUNDS}
    c_key = clean_key(src, cfg, sha, tok_hash)
    clean_dir, clean_reused = cache.entry("clean", c_key, lambda f: build_clean(f, name, src, cfg, tokenizer))
    stats = json.loads((clean_dir / "stats.json").read_text())

    def tokenize(folder: Path) -> None:  # only on a cache miss: a warm prepare never opens the cleaned rows
        cleaned = Dataset.from_file(str(clean_dir / "examples.arrow")).select(np.load(clean_dir / "keep.npy"))
        build_tokens(folder, name, cleaned, encoder, cfg)

    tok_key = key_of(VERSION, c_key, tok_hash, OmegaConf.to_container(cfg.template, resolve=True),
                     encoder.persona, src.system, cfg.data.max_length, by_tokens)
    tok_dir, tok_reused = cache.entry("tokens", tok_key, tokenize)
    tok_stats = json.loads((tok_dir / "stats.json").read_text())
    keep = np.load(tok_dir / "keep.npy")
    ds = encoded_files(tok_dir)
    n_tokens, n_turns = column(ds, "n_tokens")[keep], column(ds, "n_turns")[keep]
    bands = np.load(clean_dir / "bands.npy")[keep] if (clean_dir / "bands.npy").exists() else None
    return SourceData(
        name=name, role=Role(src.role), weight=src.weight, upsample=src.upsample, ds=ds.select(keep),
        n_tokens=n_tokens.astype(np.int64), n_turns=n_turns.astype(np.int64), bands=bands, read=stats["read"], bad_lines=stats["bad_lines"],
        cleaned={**stats["cleaned"], **tok_stats["cleaned"]}, samples={**stats["samples"], **tok_stats["samples"]},
        sha256=sha, cache={"clean": {"key": c_key, "reused": clean_reused},
                           "tokens": {"key": tok_key, "reused": tok_reused}},
    )


def distill_targets(cfg) -> list[str]:
    """General sources whose answers the base model regenerates (answers: base)."""
    return [n for n, s in cfg.data.sources.items()
            if Role(s.role) is Role.general and Answers(s.answers) is Answers.base]


def distilled(result: Mix, sources: dict[str, SourceData], cfg, encoder: Encoder, rewriter: Rewriter) -> Mix:
    """Every held-out row, and every row the mix draws over train.max_epochs, of each answers=base
    source in the base model's words (data/self_distill.py). Regenerated answers have their own
    lengths and the mix counts tokens, so the mix is drawn again until every row it draws was
    regenerated: later rounds regenerate the few rows the new lengths pull in."""
    targets = distill_targets(cfg)
    done: dict[str, set[int]] = {n: set() for n in targets}
    while True:
        todo = {}
        for n in targets:
            rows = set(result.val_index[n].tolist())
            plan = result.plans.get(n)
            if plan is not None:
                rows |= set(plan.index[plan.drawn(cfg.train.max_epochs, result.seed, result.fresh)].tolist())
            todo[n] = sorted(rows - done[n])
        if not any(todo.values()):
            break
        for n, rows in todo.items():
            if rows:
                examples = [as_example(r) for r in sources[n].ds.select(rows)]
                sources[n] = replaced(sources[n], rows, rewriter.rewrite(n, examples, cfg.data.sources[n].path),
                                      encoder, cfg, rewriter.tallies[n])
                done[n] |= set(rows)
        result = mix(sources, cfg.data)
    result.distilled = {n: rewriter.tallies[n].as_dict() for n in targets}
    return result


def replaced(data: SourceData, rows: list[int], examples: list[dict], encoder: Encoder, cfg, tally) -> SourceData:
    """`data` with `rows` re-encoded from `examples`; a row now longer than the token bounds keeps its
    source answers (counted in the tally)."""
    encoded = encoder.batch(examples)
    fresh, index, n_tokens, n_turns = [], np.arange(len(data.ds)), data.n_tokens.copy(), data.n_turns.copy()
    for j, (row, ex) in enumerate(zip(rows, examples)):
        n = encoded["n_tokens"][j]
        if n > min(cfg.data.max_length, cfg.data.clean.max_tokens or cfg.data.max_length):
            tally.kept_source += 1
            continue
        fresh.append({**as_example(ex), **{k: v[j] for k, v in encoded.items()}})
        index[row] = len(data.ds) + len(fresh) - 1
        n_tokens[row], n_turns[row] = n, encoded["n_turns"][j]
    if not fresh:
        return data
    added = Dataset.from_list(fresh, features=data.ds.features)
    return replace(data, ds=concatenate_datasets([data.ds, added]).select(index), n_tokens=n_tokens, n_turns=n_turns)


def prepare_data(cfg, tokenizer, model_path: str | None = None) -> Mix:
    tcfg: TemplateConfig = cfg.template
    apply_named_template(tokenizer, tcfg.chat_template)
    persona = persona_prompt(tcfg)
    systems = {n: SystemPrompt(s.system) for n, s in cfg.data.sources.items()}
    encoder = Encoder(tokenizer, tcfg, systems, persona)
    cache = DataCache(Path(cfg.paths.cache_dir) / "data" if cfg.data.cache else None)
    tok_hash = tokenizer_hash(tokenizer)
    sources = {name: prepare_source(name, src, cfg, tokenizer, encoder, cache, tok_hash)
               for name, src in cfg.data.sources.items()}
    result = mix(sources, cfg.data)
    general = [n for n, s in cfg.data.sources.items() if Role(s.role) is Role.general]
    if general:
        rewriter = Rewriter(cfg, tokenizer, model_path or resolve_model_path(cfg.model.name_or_path, cfg.paths.cache_dir),
                            uses_gpu(cfg.train.accelerator),
                            Path(cfg.paths.cache_dir) / "rewrite" if cfg.data.cache else None)
        if distill_targets(cfg):
            result = distilled(result, sources, cfg, encoder, rewriter)
        result.answers_by = {n: "base" if n in result.distilled or rewriter.file_is_the_base(cfg.data.sources[n].path)
                             else "source" for n in general}
    result.keepalive = cache  # without a cache folder, the scratch files live as long as the mix
    return result
