"""The base model as GGUF, written once per base and type and kept in the cache.

Several personas share one base: `export.format=gguf-lora` links it beside each adapter, and
`serve.engine=llamacpp` loads it with every persona's LoRA on top. Keyed by the base's weights hash
(the one every adapter card records), the type and this writer's version, so a changed base or
writer never reuses a stale file. Writing SmolLM2-135M as q8_0 took 1.6 s on 2 cores (138 MB); a
second export or server start pays nothing.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from recipe_runner.use.export_console import say

WRITER_VERSION = 1  # bump when gguf_export.write_gguf changes what it writes


def base_gguf(model_path: str, card: dict, cache_dir: str, qtype: str) -> Path:
    """The cached GGUF of the base the adapter card names (written now if missing)."""
    sha = str(card["base"]["weights_sha256"])[:16]
    path = Path(cache_dir).expanduser() / "gguf" / f"base-{sha}-{qtype}-w{WRITER_VERSION}.gguf"
    if path.is_file():
        return path
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe_runner.model import safe_load
    from recipe_runner.use.gguf_export import check_gguf_base, write_gguf

    check_gguf_base(model_path)
    say(f"writing the base as GGUF {qtype} once (cached: {path})")
    tokenizer = AutoTokenizer.from_pretrained(model_path, **safe_load.CODE)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **safe_load.MODEL).eval()
    base_card = {"base": card["base"], "persona": Path(card["base"]["name_or_path"]).name,
                 "recipe": "base (no adapter)", "chat_template": tokenizer.chat_template}
    with partial(path) as tmp:
        write_gguf(model, tokenizer, base_card, tmp, qtype, base_card["persona"], merged=False)
    return path


@contextmanager
def partial(path: Path):
    """A file written under its own name in a private folder beside `path`, moved into place when
    complete (atomic: two processes writing the same cache entry at once are harmless)."""
    folder = path.parent / f".partial-{os.getpid()}-{path.stem}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder / path.name
        (folder / path.name).replace(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the cache and the target share a disk (no second copy), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
