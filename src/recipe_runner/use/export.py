"""stage=export: a trained adapter as files that run without recipe-runner or peft.

    merged  a plain transformers folder (safetensors): the adapter folded into the base in full
            precision, the tokenizer with the chat template the persona trained with, persona.json
    gguf    GGUF files for llama.cpp / Ollama, one per export.gguf_types (use/gguf_export.py), and
            an Ollama Modelfile with the trained system prompt
    gguf-lora  the adapter alone as a GGUF LoRA (use/gguf_lora.py), the base as GGUF beside it (linked
            from the cache, use/gguf_base.py) and a Modelfile with FROM base + ADAPTER: one base file
            serves several personas (llama.cpp --lora, Ollama ADAPTER, serve.engine=llamacpp)

Everything that can be wrong with the input (not an adapter, an out folder that holds files, an
adapter for another base, a base GGUF cannot describe) is refused before any weights load. Files
are written into `<out>.partial` and renamed at the end, so a crash never leaves half an export.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from recipe_runner.config.schema import ExportFormat
from recipe_runner.data.chat_format import stop_ids
from recipe_runner.errors import RecipeError
from recipe_runner.model import safe_load
from recipe_runner.train.adapter_card import CARD, check_base, check_base_source, read_card, resolve_adapter
from recipe_runner.model.embedded import resolve_model_path
from recipe_runner.use.export_console import mb, say


def export(cfg, run_dir: Path) -> dict:
    started = time.time()
    fmt = ExportFormat(cfg.export.format)
    folder = resolve_adapter(cfg.adapter, cfg.paths.output_dir)
    card = read_card(folder)
    out = out_folder(cfg.export.out, folder, fmt)
    check_base_source(folder, card, cfg.model.name_or_path)
    model_path = resolve_model_path(card["base"]["name_or_path"], cfg.paths.cache_dir)
    check_base(folder, card, model_path)
    name = slug(card.get("persona") or card.get("recipe") or "persona")
    if fmt is not ExportFormat.merged:
        from recipe_runner.use.gguf_export import check_gguf_base, gguf_types

        types = gguf_types(cfg.export.gguf_types)
        check_gguf_base(model_path)  # a base GGUF cannot describe is refused before the weights load
    if fmt is ExportFormat["gguf-lora"]:
        from recipe_runner.use.gguf_lora import check_lora

        check_lora(folder)
        note = None  # nothing is merged: the adapter runs on the base as it trained (in full precision)
        model, tokenizer = None, persona_tokenizer(card, model_path)
    else:
        note = quant_note(card)
        model, tokenizer = merged_model(folder, card, model_path)

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if fmt is ExportFormat.merged:
            say(f"writing {out}")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        elif fmt is ExportFormat.gguf:
            from recipe_runner.use.gguf_export import preferred, write_gguf, write_modelfile

            for qtype in types:
                say(f"writing {name}-{qtype}.gguf ...")
                write_gguf(model, tokenizer, card, tmp / f"{name}-{qtype}.gguf", qtype, name)
            write_modelfile(tmp, name, preferred({t: f"{name}-{t}.gguf" for t in types}), card, tokenizer,
                            cfg.sampling)
        else:
            from recipe_runner.use.gguf_base import base_gguf, link_or_copy
            from recipe_runner.use.gguf_export import preferred, write_modelfile
            from recipe_runner.use.gguf_lora import write_gguf_lora

            base_name = slug(Path(card["base"]["name_or_path"]).name)
            bases = {t: f"{base_name}-{t}.gguf" for t in types}
            for qtype, file in bases.items():
                link_or_copy(base_gguf(model_path, card, cfg.paths.cache_dir, qtype), tmp / file)
            write_gguf_lora(folder, card, model_path, tmp / f"{name}-lora.gguf", name)
            write_modelfile(tmp, name, preferred(bases), card, tokenizer, cfg.sampling, adapter=f"{name}-lora.gguf")
        export_info = {"format": fmt.value, "adapter": str(folder), "base": card["base"]["name_or_path"],
                       "base_path": model_path, "quant_note": note, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "merged_onto": None if model is None else "the full-precision base (float32)"}
        (tmp / CARD).write_text(json.dumps({**card, "export": export_info}, indent=2, ensure_ascii=False,
                                           default=str), encoding="utf-8")
        for f in tmp.rglob("*"):  # some writers create their files 0600 (mkstemp); an export is for sharing
            f.chmod(f.stat().st_mode | 0o444)
        if out.exists():
            out.rmdir()  # checked empty above
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    sizes = {f: (out / f).stat().st_size for f in files}
    for f in files:
        say(f"  {f:<32} {mb(sizes[f]):>12}")
    summary = {"format": fmt.value, "out": str(out), "files": files, "file_bytes": sizes,
               "adapter": str(folder), "persona": card.get("persona"), "base": card["base"]["name_or_path"],
               "quant_in_training": card["base"].get("quant_in_training", "none"), "quant_note": note,
               "wall_seconds": time.time() - started}
    if fmt is not ExportFormat.merged:
        summary["modelfile"] = str(out / "Modelfile")
        summary["ollama"] = f"cd {out} && ollama create {name} -f Modelfile && ollama run {name}"
        say(f"ollama: {summary['ollama']}")
    else:
        say("load it with AutoModelForCausalLM.from_pretrained / AutoTokenizer.from_pretrained (no peft needed)")
    return summary


def out_folder(out: str | None, adapter: Path, fmt: ExportFormat) -> Path:
    """export.out, or export/<format> in the adapter's run folder (<run>/adapters/best -> <run>/export/<format>;
    another adapter of the run, adapters/epoch_02, -> <run>/export/<format>-epoch_02). Never overwritten."""
    if out:
        path = Path(out).expanduser()
    elif adapter.parent.name == "adapters":
        suffix = "" if adapter.name == "best" else f"-{adapter.name}"
        path = adapter.parent.parent / "export" / f"{fmt.value}{suffix}"
    else:
        path = adapter / "export" / fmt.value
    path = path.resolve()
    if path.exists() and not path.is_dir():
        raise RecipeError(f"export.out={path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise RecipeError(f"export.out={path} exists and is not empty: remove it or choose another export.out "
                          f"(an export never overwrites files)")
    return path


def quant_note(card: dict) -> str | None:
    quant = card["base"].get("quant_in_training", "none")
    if quant in (None, "none"):
        return None
    note = (f"the adapter trained on a 4-bit ({quant}) base; it is merged onto the full-precision (float32) "
            f"base, not into 4-bit weights (that would round the adapter away): replies can differ slightly "
            f"from the ones seen in training")
    say(f"NOTE: {note}")
    return note


def persona_tokenizer(card: dict, model_path: str):
    """The base's tokenizer with the chat template the persona trained with."""
    from transformers import AutoTokenizer

    revision = card["base"].get("revision") if not Path(model_path).is_dir() else None
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=revision, **safe_load.CODE)
    if card.get("chat_template"):
        tokenizer.chat_template = card["chat_template"]
    return tokenizer


def merged_model(folder: Path, card: dict, model_path: str):
    """The base in float32 with the adapter merged in (peft only here), and the tokenizer with the
    persona's chat template."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    revision = card["base"].get("revision") if not Path(model_path).is_dir() else None
    t = time.time()
    say(f"loading the base {card['base']['name_or_path']} ({model_path}) in float32")
    tokenizer = persona_tokenizer(card, model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, revision=revision, dtype=torch.float32,
                                                **safe_load.MODEL)
    say(f"merging the adapter {folder} (loaded in {time.time() - t:.1f} s)")
    t = time.time()
    model = PeftModel.from_pretrained(base, folder, **safe_load.ADAPTER).merge_and_unload(safe_merge=True).eval()
    model.config.use_cache = True  # training turned it off; generation wants it
    stop = stop_ids(tokenizer)
    if model.generation_config is not None and stop:
        model.generation_config.eos_token_id = stop if len(stop) > 1 else stop[0]
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    say(f"merged in {time.time() - t:.1f} s")
    return model, tokenizer


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "persona"
