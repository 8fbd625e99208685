"""DDP vs FSDP on the same recipe, data and steps: weights held per rank, throughput, peak RSS.

Run from the repository root with the project's venv active (nothing else may train meanwhile):

    python bench/bench_sharding.py [--recipe alex_persona_cpu] [--steps 4] [--devices 2]
        [--accelerator cpu] [KEY=VALUE ...]

Each strategy is one `python run.py` job in its own folder under a temporary output dir, one
after the other, with train.max_steps=--steps, the evaluation checks off and two validation
batches, so the figures are about training. Read from each job's summary.json:
weights_mb_per_rank (what rank 0 holds between forwards), tokens_per_second (non-pad tokens of
all ranks / rank 0's seconds in training steps), peak_rss_mb (rank 0), fit_seconds.
Trailing KEY=VALUE arguments are Hydra overrides applied to both runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("ddp", "fsdp")
FIGURES = (("weights_mb_per_rank", "weights / rank (MB)", "{:,.1f}"), ("tokens_per_second", "tok/s", "{:,.0f}"),
           ("peak_rss_mb", "peak RSS rank 0 (MB)", "{:,.0f}"), ("fit_seconds", "fit (s)", "{:,.0f}"))


def run(strategy: str, args, out: Path) -> dict:
    cmd = [sys.executable, "run.py", f"recipe={args.recipe}", f"train.strategy={strategy}",
           f"train.devices={args.devices}", f"train.accelerator={args.accelerator}", f"train.max_steps={args.steps}",
           "eval.checks=false", "eval.limit_val_batches=2", "logger.wandb.enabled=false",
           f"paths.output_dir={out}", f"hydra.run.dir={out}/{strategy}", *args.overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{strategy} failed:\n{res.stderr[-3000:]}")
    return json.loads((out / strategy / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="alex_persona_cpu")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as tmp:
        got = {s: run(s, args, Path(tmp)) for s in STRATEGIES}
    print(f"\n{args.recipe}, {args.devices} x {args.accelerator}, {args.steps} optimizer steps, "
          f"precision {got['ddp']['precision']}, {got['ddp']['trained_tokens']:,} tokens\n")
    print("| strategy | " + " | ".join(title for _, title, _ in FIGURES) + " | val/loss |")
    print("|---|" + "---:|" * (len(FIGURES) + 1))
    for s, summary in got.items():
        cells = [fmt.format(summary[key]) for key, _, fmt in FIGURES]
        print(f"| {s} | " + " | ".join(cells) + f" | {summary['val_loss']['val/loss']:.4f} |")
    ratios = [f"{got['fsdp'][key] / got['ddp'][key]:.2f}x" if got["ddp"][key] else "-" for key, _, _ in FIGURES]
    print("| fsdp / ddp | " + " | ".join(ratios) + " | |")
    if args.json:
        Path(args.json).write_text(json.dumps(got, indent=2, default=str))


if __name__ == "__main__":
    main()
