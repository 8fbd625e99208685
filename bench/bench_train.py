"""Training throughput: recipe-runner (Lightning) vs TRL SFTTrainer, same model, data and LoRA.

Run from the repository root, with the project's venv active (nothing else may train meanwhile):

    python bench/bench_train.py --recipe alex_persona_cpu --steps 20 [--warmup 1]
        [--only ours|trl|trl_packing|trl_fp32|trl_packing_fp32[,...]] [--json out.json]
        [--trl-gc default|recipe] [KEY=VALUE ...]

Trailing KEY=VALUE arguments are Hydra overrides applied to both sides (e.g. data.mix.general_ratio=3).
Each run in its own subprocess, one after another (never in parallel), so peak RSS
(ru_maxrss: data prep + model load + training) and peak CUDA memory (on a GPU) are per run.
By default the first three:

  ours              the runner's own path: prepare_data -> build_model -> MixDataModule -> PersonaModule ->
                    lightning.Trainer (packed rows, assistant-only loss, lm_head only on labelled positions)
  trl               trl.SFTTrainer + SFTConfig at its defaults (packing=False: one example per batch row)
  trl_packing       the same with packing=True (TRL's default "bfd" packing, which turns on padding-free)
  trl_fp32          trl with bf16=False, a float32 4-bit compute dtype, and TRL's cast of the LoRA weights
                    to bf16 (done under QLoRA whatever bf16 says) undone: plain float32, no bf16 anywhere
  trl_packing_fp32  trl_packing likewise

Why the _fp32 variants: TRL's default bf16=True autocast is emulated, and slow, on a CPU without native
bf16 (AVX512-BF16 / AMX), where our side resolves train.precision=auto to 32-true. On such a CPU compare
ours with both: `--only ours,trl,trl_fp32` prints ours/trl (TRL as shipped) and ours/trl_fp32 (the
same float32 arithmetic on both sides). On a GPU or a bf16 CPU the default variants are the fair ones.

Matched between the sides: base weights (the folder resolve_model_path gives for the recipe's model,
sdpa; TRL loads the frozen weights in float32, its default; ours stores them in the compute dtype), BitsAndBytesConfig (4-bit quant type, double quant and compute dtype built like
qlora.build_model), peft LoRA (r, alpha, dropout, target_modules, CAUSAL_LM), max_length, learning rate,
weight decay, grad-clip norm, seed, gradient accumulation, device (CPU/GPU) and the training examples:
the exact examples of prepare_data's mix.train (niche + general after split and token mix),
re-read with corpus.load_source, given the persona system prompt by Encoder.with_system and matched
to mix.train by token ids. The data files are snapshotted once (complete lines only) so that a file
being appended to cannot give the three runs different data.
Tokens per optimizer step: ours = batch_size packed rows of <= max_length tokens x grad_accum;
trl_packing = the same batch_size and grad_accum (TRL packs rows of max_length too); trl (unpacked) =
per-device batch of round(batch_size x examples per packed row) examples, same grad_accum.
Left at TRL's defaults (reported in the notes): precision (bf16=True autocast; the _fp32 runs: bf16=False), gradient
checkpointing (True, unless --trl-gc recipe), loss on every token (assistant_only_loss=False),
optimizer (adamw_torch_fused), LR schedule, shuffling, TRL's cast of LoRA weights to bf16 under QLoRA
(undone in the _fp32 runs).

Timed window: from the first micro-batch of optimizer step `warmup` (0-based) to the end of the last
optimizer step; tokens are counted over the same micro-batches: non-pad = attention-mask sum (TRL
padding-free rows have no padding, so their length), supervised = labels[:, 1:] != -100.
tok_s is the mean over that window; tok_s_median, tok_s_min and tok_s_max are over its optimizer steps (each
step from the end of the one before to its own end, synchronised on a GPU), whose rows are in step_samples
of the --json output. Quote the median with its range: a single short window moves with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from machine import busy_cpu_seconds, cpu_seconds  # noqa: E402  (bench/ is the script folder)
RUNS = ("ours", "trl", "trl_packing", "trl_fp32", "trl_packing_fp32")
DEFAULT_RUNS = ("ours", "trl", "trl_packing")


def compose_cfg(recipe: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from recipe_runner.config.schema import register

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=[f"recipe={recipe}", *overrides])


def snapshot_sources(cfg, dest: Path) -> list[str]:
    """Copy each source's data (complete lines only) into dest; return Hydra overrides pointing at it."""
    out = []
    for name, src in cfg.data.sources.items():
        path, target = Path(src.path), dest / name / Path(src.path).name
        target.parent.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            data = path.read_bytes()
            target.write_bytes(data[: data.rfind(b"\n") + 1] if b"\n" in data else data)
        out.append(f"data.sources.{name}.path={target}")
    return out


class Meter:
    """Tokens and time over the micro-batches of optimizer steps >= warmup, in total and per optimizer step.

    Step k's time runs from the end of step k-1 (for the first timed step: its first micro-batch) to the end of
    its last micro-batch (synchronised), so the steps' times add up to the whole window."""

    def __init__(self, warmup: int):
        import torch

        self.sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        self.warmup, self.t0, self.t1 = warmup, None, None
        self.tokens = self.supervised = self.micro = 0
        self.step = None  # the optimizer step of the latest micro-batch
        self.step_tokens: dict[int, int] = {}
        self.step_supervised: dict[int, int] = {}
        self.step_end_at: dict[int, float] = {}

    def batch(self, step: int, n_real, labels) -> None:
        if step < self.warmup:
            return
        if self.t0 is None:
            self.sync()
            self.t0 = time.perf_counter()
        n, sup = int(n_real), int((labels[:, 1:] != -100).sum())  # positions that carry a next-token loss
        self.tokens += n
        self.supervised += sup
        self.micro += 1
        self.step = step
        self.step_tokens[step] = self.step_tokens.get(step, 0) + n
        self.step_supervised[step] = self.step_supervised.get(step, 0) + sup

    def step_end(self) -> None:  # called after every (micro-)step: the last call closes the window
        if self.t0 is not None:
            self.sync()
            self.t1 = time.perf_counter()
            self.step_end_at[self.step] = self.t1

    def per_step(self) -> list[dict]:
        """One row per timed optimizer step: tokens, label tokens, seconds."""
        rows, before = [], self.t0
        for step in sorted(self.step_end_at):
            secs = self.step_end_at[step] - before
            before = self.step_end_at[step]
            rows.append({"step": step, "tokens": self.step_tokens[step], "supervised": self.step_supervised[step],
                         "seconds": secs})
        return rows

    def result(self, steps: int) -> dict:
        import statistics

        secs = self.t1 - self.t0 if self.t1 is not None else float("nan")
        timed = steps - self.warmup
        rows = self.per_step()
        rates = [r["tokens"] / r["seconds"] for r in rows if r["seconds"] > 0]
        sup_rates = [r["supervised"] / r["seconds"] for r in rows if r["seconds"] > 0]
        return {"timed_steps": timed, "micro_batches": self.micro, "tokens": self.tokens,
                "supervised": self.supervised, "seconds": secs, "tok_s": self.tokens / secs,
                "sup_tok_s": self.supervised / secs, "tok_per_step": self.tokens / max(timed, 1),
                # per optimizer step: the median and the range of non-pad tok/s (tok_s above is the mean)
                "tok_s_median": statistics.median(rates) if rates else None,
                "tok_s_min": min(rates) if rates else None, "tok_s_max": max(rates) if rates else None,
                "sup_tok_s_median": statistics.median(sup_rates) if sup_rates else None,
                "step_samples": rows}


def load_common(cfg):
    """Exactly the runner's data path: seed, model path, tokenizer, prepare_data, precision."""
    import lightning as L
    import torch
    from recipe_runner.data.prepared import load_prepared

    L.seed_everything(cfg.train.seed, verbose=False)
    parts = load_prepared(cfg)
    on_gpu = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    return parts, on_gpu


def shape_facts(model, lengths) -> dict:
    """For bench/gpu_report.py's FLOPs per token: the trainable (LoRA) parameters, and attn_len = sum(s^2) /
    sum(s) over the training examples' lengths s (under the causal mask a token attends to attn_len / 2
    positions on average, the mean taken over tokens)."""
    lengths = [int(n) for n in lengths]
    return {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "attn_len": sum(n * n for n in lengths) / max(sum(lengths), 1)}


def adapter_dtype(model) -> str:
    """dtype of the trainable (LoRA) weights: TRL casts them to bf16 under QLoRA, build_model keeps fp32."""
    return str(next(p.dtype for p in model.parameters() if p.requires_grad)).replace("torch.", "")


def run_ours(cfg, steps: int, warmup: int, workdir: Path) -> dict:
    import lightning as L
    from recipe_runner.train.fit import build_training
    from recipe_runner.config.schema import TrainOn

    parts, _ = load_common(cfg)
    mix, precision = parts.mix, parts.precision
    model, dm, module = build_training(cfg, parts)
    meter = Meter(warmup)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            meter.batch(trainer.global_step, batch["n_real"], batch["labels"])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            meter.step_end()

    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        precision=precision, accumulate_grad_batches=cfg.train.grad_accum,
        gradient_clip_val=cfg.train.grad_clip or None, accelerator=cfg.train.accelerator,
        devices=cfg.train.devices, strategy=cfg.train.strategy, callbacks=[Timer()],
        enable_model_summary=False, enable_progress_bar=False, default_root_dir=workdir,
    )
    trainer.fit(module, datamodule=dm)
    rows = f"{cfg.train.batch_size} packed rows x {cfg.data.max_length}" if cfg.data.packing else \
        f"{cfg.train.batch_size} examples"
    return {"precision": f"{precision}, lora {adapter_dtype(model)}", "steps": trainer.global_step,
            "data_tokens": sum(mix.train["n_tokens"]), "examples": len(mix.train),
            **shape_facts(model, mix.train["n_tokens"]),
            "notes": f"micro-batch {rows}, grad_accum {cfg.train.grad_accum}, grad ckpt "
                     f"{cfg.model.gradient_checkpointing}, loss on {TrainOn(cfg.template.train_on).value} tokens",
            **meter.result(trainer.global_step)}


def trl_dataset(cfg, tok, mix):
    """The messages of exactly the examples in mix.train, in that order, with the persona system prompt."""
    from datasets import Dataset
    from recipe_runner.data.corpus import load_source
    from recipe_runner.config.schema import SystemPrompt
    from recipe_runner.data.bible import persona_prompt
    from recipe_runner.data.templates import Encoder

    systems = {n: SystemPrompt(s.system) for n, s in cfg.data.sources.items()}
    encoder = Encoder(tok, cfg.template, systems, persona_prompt(cfg.template))
    by_ids = {}
    for name, src in cfg.data.sources.items():
        for ex in load_source(name, src, tok).examples:
            if ex["text"]:
                raise SystemExit(f"source {name!r} is plain text: the TRL side here supports chat sources only")
            by_ids[tuple(encoder(ex)["input_ids"])] = encoder.with_system(name, ex["messages"])
    return Dataset.from_dict({"messages": [by_ids[tuple(ids)] for ids in mix.train["input_ids"]]})


def run_trl(cfg, steps: int, warmup: int, workdir: Path, packing: bool, trl_gc: str, fp32: bool = False) -> dict:
    """fp32: bf16=False, fp16=False and a float32 4-bit compute dtype instead of TRL's default bf16 autocast."""
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from recipe_runner.data.batches import pack
    from recipe_runner.model.qlora import DTYPES
    from recipe_runner.config.schema import Quant

    parts, on_gpu = load_common(cfg)
    tok, model_path, mix, precision = parts.tokenizer, parts.model_path, parts.mix, parts.precision
    dataset = trl_dataset(cfg, tok, mix)
    lengths = mix.train["n_tokens"]
    if packing:
        batch = cfg.train.batch_size
        how = f"micro-batch {batch} packed rows x {cfg.data.max_length} (padding-free, flattened)"
    else:  # as many examples as `batch_size` of our packed rows hold on average
        per_row = len(lengths) / len(pack(lengths, cfg.data.max_length, cfg.train.seed)) if cfg.data.packing else 1.0
        batch = max(1, round(cfg.train.batch_size * per_row))
        how = f"micro-batch {batch} examples = round({cfg.train.batch_size} rows x {per_row:.2f} examples/row)"
    quant = None
    if Quant(cfg.model.quant) is not Quant.none:  # as qlora.build_model builds it
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=Quant(cfg.model.quant).value,
                                   bnb_4bit_use_double_quant=cfg.model.double_quant,
                                   bnb_4bit_compute_dtype=torch.float32 if fp32 else DTYPES[precision])
    targets = list(cfg.lora.target_modules)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets[0] if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")
    extra = {"gradient_checkpointing": cfg.model.gradient_checkpointing} if trl_gc == "recipe" else {}
    if fp32:
        extra.update(bf16=False, fp16=False)
    args = SFTConfig(
        output_dir=str(workdir), use_cpu=not on_gpu, max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=cfg.train.grad_accum, learning_rate=cfg.train.lr,
        weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.grad_clip, seed=cfg.train.seed,
        max_length=cfg.data.max_length, packing=packing, report_to=[], save_strategy="no", eval_strategy="no",
        dataloader_num_workers=cfg.train.num_workers, disable_tqdm=True,
        model_init_kwargs={"dtype": "float32", "attn_implementation": cfg.model.attn_implementation,
                           "revision": cfg.model.revision},
        **extra,
    )
    meter = Meter(warmup)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_end()

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            meter.batch(self.state.global_step, mask.sum() if mask is not None else inputs["input_ids"].numel(),
                        inputs["labels"])
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = CountingSFTTrainer(model=model_path, args=args, train_dataset=dataset, processing_class=tok,
                                 quantization_config=quant, peft_config=lora, callbacks=[Timer()])
    if fp32:  # TRL casts the LoRA weights to bf16 under QLoRA whatever args.bf16 says: no bf16 left anywhere
        for prm in trainer.model.parameters():
            if prm.requires_grad:
                prm.data = prm.data.float()
    ds = trainer.train_dataset
    data_tokens = sum(sum(x) for x in ds["seq_lengths"]) if "seq_lengths" in ds.column_names else \
        sum(len(x) for x in ds["input_ids"])
    trainer.train()
    amp = "bf16-mixed" if args.bf16 else "16-mixed" if args.fp16 else "32-true"
    loss = "assistant" if args.assistant_only_loss else "all"
    return {"precision": f"{amp}, lora {adapter_dtype(trainer.model)}", "steps": trainer.state.global_step,
            "data_tokens": data_tokens, "examples": len(dataset), **shape_facts(trainer.model, lengths),
            "notes": f"{how}, grad_accum {args.gradient_accumulation_steps}, grad ckpt "
                     f"{args.gradient_checkpointing}, loss on {loss} tokens, optim {args.optim.value}",
            **meter.result(trainer.state.global_step)}


def worker(a, overrides: list[str]) -> None:
    cfg = compose_cfg(a.recipe, overrides)
    workdir = Path(a.workdir)
    if a.worker == "ours":
        res = run_ours(cfg, a.steps, a.warmup, workdir)
    else:
        res = run_trl(cfg, a.steps, a.warmup, workdir, a.worker.startswith("trl_packing"), a.trl_gc,
                      fp32=a.worker.endswith("_fp32"))
    import torch

    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    Path(a.result).write_text(json.dumps(res))


def _spread(r: dict) -> str:
    if r.get("tok_s_median") is None:
        return "-"
    return f"{r['tok_s_median']:.1f} [{r['tok_s_min']:.1f}-{r['tok_s_max']:.1f}]"


def print_table(results: dict) -> None:
    cuda = any(r.get("peak_cuda_mb") for r in results.values())
    cols = ["runner", "precision", "steps", "non-pad tok", "label tok", "seconds", "non-pad tok/s",
            "median [min-max] per step", "label tok/s", "tok/step", "peak RSS MB"] + (["peak CUDA MB"] if cuda else [])
    rows = [cols]
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "FAILED: " + r["error"]] + [""] * (len(cols) - 2))
            continue
        rows.append([name, r["precision"], str(r["timed_steps"]), f"{r['tokens']:,}", f"{r['supervised']:,}",
                     f"{r['seconds']:.1f}", f"{r['tok_s']:.1f}", _spread(r), f"{r['sup_tok_s']:.1f}",
                     f"{r['tok_per_step']:,.0f}", f"{r['peak_rss_mb']:,.0f}"]
                    + ([f"{r['peak_cuda_mb'] or 0:,.0f}"] if cuda else []))
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    for name, r in results.items():
        if "error" not in r:
            print(f"{name}: {r['examples']} train examples = {r['data_tokens']:,} tokens as tokenized by that side; "
                  f"{r['notes']}; other processes used {r['other_cpu_cores']:.2f} of {os.cpu_count()} cores")
    if busy := [n for n, r in results.items() if r.get("other_cpu_cores", 0) > 0.1]:
        print(f"WARNING: other processes used the CPUs during {busy}: those numbers are skewed; rerun on an idle machine")
    ours = results.get("ours", {})
    for other in RUNS[1:]:
        o = results.get(other, {})
        if "tok_s" in ours and "tok_s" in o:
            mem = f", peak CUDA x{ours['peak_cuda_mb'] / o['peak_cuda_mb']:.2f}" \
                if ours.get("peak_cuda_mb") and o.get("peak_cuda_mb") else ""
            med = f" (per-step medians x{ours['tok_s_median'] / o['tok_s_median']:.2f})" \
                if ours.get("tok_s_median") and o.get("tok_s_median") else ""
            print(f"ours/{other}: non-pad tok/s x{ours['tok_s'] / o['tok_s']:.2f}{med}, label tok/s "
                  f"x{ours['sup_tok_s'] / o['sup_tok_s']:.2f}, peak RSS x{ours['peak_rss_mb'] / o['peak_rss_mb']:.2f}"
                  + mem)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="alex_persona_cpu")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run, warm-up included")
    p.add_argument("--warmup", type=int, default=1, help="optimizer steps left out of the timing")
    p.add_argument("--only", default=",".join(DEFAULT_RUNS),
                   help="comma-separated subset of " + ", ".join(RUNS) + " (default: " + ",".join(DEFAULT_RUNS) + ")")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--trl-gc", choices=("default", "recipe"), default="default",
                   help="TRL gradient checkpointing: its default (True) or the recipe's model.gradient_checkpointing")
    p.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a, overrides = p.parse_known_args()
    json_out = Path(a.json).resolve() if a.json else None
    if any(o.startswith("-") for o in overrides):
        p.error(f"unknown options: {overrides}")
    os.chdir(REPO)  # recipes name their data relative to the repository root
    if a.worker:
        return worker(a, overrides)
    if a.steps <= a.warmup:
        p.error("--steps must be larger than --warmup")
    runs = [r.strip() for r in a.only.split(",")]
    if bad := [r for r in runs if r not in RUNS]:
        p.error(f"--only: unknown {bad}; choose from {RUNS}")

    from recipe_runner.validate import validate

    cfg = compose_cfg(a.recipe, overrides)
    validate(cfg)  # as the runner does, before anything heavy
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data_overrides = snapshot_sources(cfg, Path(tmp) / "data")
        for name in runs:  # one after another, each in a fresh process
            workdir, result = Path(tmp) / name, Path(tmp) / f"{name}.json"
            workdir.mkdir()
            cmd = [sys.executable, __file__, "--worker", name, "--recipe", a.recipe, "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--trl-gc", a.trl_gc, "--workdir", str(workdir),
                   "--result", str(result), *overrides, *data_overrides]
            print(f"[bench] {name}: {a.steps} steps ({a.warmup} warm-up)", flush=True)
            started, busy0, ours0 = time.time(), busy_cpu_seconds(), cpu_seconds(resource.RUSAGE_CHILDREN)
            rc = subprocess.run(cmd, env=env).returncode
            wall = time.time() - started
            others = (busy_cpu_seconds() - busy0 - (cpu_seconds(resource.RUSAGE_CHILDREN) - ours0)) / wall
            results[name] = json.loads(result.read_text()) if rc == 0 else {"error": f"exit code {rc}"}
            results[name].update(wall_s=wall, other_cpu_cores=others)
    print()
    print(f"recipe {a.recipe}, {a.steps} optimizer steps, first {a.warmup} untimed; overrides: {overrides or 'none'}")
    print_table(results)
    if json_out:
        json_out.write_text(json.dumps({"recipe": a.recipe, "steps": a.steps, "warmup": a.warmup,
                                        "overrides": overrides, "results": results}, indent=2))


if __name__ == "__main__":
    main()
