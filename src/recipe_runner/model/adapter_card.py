"""persona.json: what an adapter folder needs to be used without its recipe.

Every adapter a run saves (adapters/epoch_NN, best, last) carries one beside peft's own files:
the exact system prompt it trained with, the chat template, the base model it belongs to (and
a sha256 of the base's weight files, so an adapter is never put on another base), the bible, the
recipe and run, the epoch and that epoch's checks. `stage=chat|serve|export` read nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig

from recipe_runner.config.schema import Quant, Role, SystemPrompt
from recipe_runner.data.templates import load_bible, render_persona
from recipe_runner.errors import RecipeError

CARD = "persona.json"
VERSION = 1


def weights_sha256(model_path: str) -> str | None:
    """sha256 over the base's *.safetensors files (names and bytes, sorted); None for a hub id.
    SmolLM2-135M in float32 is 540 MB: about a second."""
    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def run_card(cfg: DictConfig, tokenizer, model_path: str) -> dict:
    """The part of the card every adapter of this run shares."""
    persona = any(SystemPrompt(s.system) is SystemPrompt.persona for s in cfg.data.sources.values()
                  if Role(s.role) is Role.niche)
    bible = load_bible(cfg.template.persona.bible)
    return {
        "format": VERSION,
        "persona": bible.get("name"),
        "recipe": cfg.name,
        "system_prompt": render_persona(cfg.template) if persona else None,
        "chat_template": tokenizer.chat_template,
        "base": {"name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision,
                 "weights_sha256": weights_sha256(model_path),
                 "quant_in_training": Quant(cfg.model.quant).value},
        "bible": bible,
        "max_length": cfg.data.max_length,
    }


def write_card(folder: Path, card: dict, **fields) -> None:
    (Path(folder) / CARD).write_text(json.dumps({**card, **fields}, indent=2, ensure_ascii=False, default=str))


def stamp_checks(adapters: Path, history: list[dict], best_epoch: int | None) -> None:
    """After the run: each saved adapter's card gets its epoch's checks (epoch_NN, best, last)."""
    rows = {r["epoch"]: r for r in history}
    folders = {p: int(p.name.split("_")[1]) for p in adapters.glob("epoch_*")}
    folders[adapters / "best"] = best_epoch
    folders[adapters / "last"] = max(rows) if rows else None
    for folder, epoch in folders.items():
        if (folder / CARD).exists():
            card = json.loads((folder / CARD).read_text())
            epoch = card["epoch"] if card.get("epoch") is not None else epoch
            write_card(folder, card, epoch=epoch, checks=rows.get(epoch))


def check_base(folder: Path, card: dict, model_path: str) -> None:
    """An adapter on another base than the one it trained on is garbage: refuse, naming both hashes
    (chat, serve and export all check it before loading weights)."""
    expected, local = card["base"].get("weights_sha256"), weights_sha256(model_path)
    if expected and local and expected != local:
        raise RecipeError(f"adapter {folder} was trained on {card['base']['name_or_path']} with weights sha256 "
                          f"{expected[:16]}..., but {model_path} has weights sha256 {local[:16]}...: "
                          f"not the base it trained on")


def read_card(folder: Path) -> dict:
    """The card of an adapter folder, or a one-line error naming what is missing."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise RecipeError(f"{folder} is not an adapter folder (no adapter_config.json)")
    if not (folder / CARD).exists():
        raise RecipeError(f"{folder} has no {CARD}: it was not saved by recipe-runner (or by a version before "
                          f"adapters carried their system prompt and base); retrain, or use it with peft directly")
    card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    if card.get("format") != VERSION:
        raise RecipeError(f"{folder / CARD}: format {card.get('format')!r}, this recipe-runner reads {VERSION}")
    return card


def resolve_adapter(spec: str, output_dir: str) -> Path:
    """adapter=...: an adapter folder, a run folder (its adapters/best, else adapters/last) or `last`
    (the newest run under paths.output_dir that saved one)."""
    if spec == "last":
        runs = Path(output_dir) / "runs"
        found = sorted((p for p in runs.glob("*/*/adapters/best") if (p / CARD).exists()),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise RecipeError(f"adapter=last: no run under {runs} has saved an adapter yet; run `python run.py` first")
        return found[-1]
    path = Path(spec).expanduser()
    if not path.exists():
        raise RecipeError(f"adapter={spec}: no such folder")
    if (path / "adapter_config.json").exists():
        return path
    for sub in ("adapters/best", "adapters/last"):
        if (path / sub / "adapter_config.json").exists():
            return path / sub
    raise RecipeError(f"adapter={spec}: neither an adapter folder (adapter_config.json) nor a run folder "
                      f"(adapters/best)")
