"""Helpers of bench/gpu_check.sh: the dependency check, the matmul peak, each run's check and the closing table.

    python bench/gpu_report.py deps [--wheels bench/wheels]
    python bench/gpu_report.py peak --work DIR [--cuda]
    python bench/gpu_report.py run|bench --work DIR --model NAME [--cuda] [--eval]
    python bench/gpu_report.py table --work DIR --models smollm2-135m,llama-1b [--cuda] [--eval-model NAME]

deps: every dependency in pyproject.toml (and [bench]'s trl) must be installed in a version its specifier
allows (wandb may be missing: the check runs with logger.wandb.enabled=false and the project imports wandb
only when W&B is on); what the wheels in bench/wheels need themselves is checked too (missing: error; a
version outside the range they declare: warning, as the image's own packages win). Then the imports the
runs need, with versions, and what torch sees. Exit 1 on any error.

peak: the GPU's bf16 matmul rate, measured (n x n bf16 torch.matmul, n = 8192, best of 5 rounds of 20,
timed with CUDA events; TFLOP/s = 2 n^3 / time), into DIR/peak.json: the denominator of MFU. Without CUDA
(GPU_CHECK_ALLOW_CPU=1) a small CPU matmul stands in, labelled meaningless; with --cuda a missing GPU fails.

run / bench: one model's run.py summary or bench_train.py JSON, checked and printed in a line (exit 1 when
missing or failed: bench_train.py itself exits 0 when one of its runs fails). run --eval: that run had the
evaluation on; its eval_seconds must be > 0, and eval_seconds / eval_fraction are printed.
table: reads DIR/runs/<model>/**/summary.json (python run.py), DIR/bench_<model>.json
(bench/bench_train.py --json) and DIR/peak.json for each model, prints the tables (per-step median tok/s
with its range, ratios, MFU, peak memory, the evaluation's share in --eval-model's run) and writes
DIR/gpu_check.json. Exit 1 when a run is missing or failed, or, with --cuda, when a run recorded no CUDA memory
(it did not train on the GPU).

MFU = median tok/s x FLOPs per trained token / measured peak. FLOPs per token, LoRA on a frozen 4-bit base
(flops_per_token): 4 N_frozen + 6 N_lora + 6 L d_attn s. N_frozen: the base's matmul weights per token (the
layers' q, k, v, o, gate, up, down and the lm_head; embeddings and norms left out), 2 N for the forward and
2 N for the input gradients, none for frozen weights' gradients; N_lora: the trainable parameters
(forward, input and weight gradients); attention: QK^T and AV, 4 d_attn c per layer forward, 3x with
backward, c = s / 2 attended positions per token under the causal mask, s = sum(len^2) / sum(len) over the
training examples. The same count for every side (TRL included): NF4 dequantisation, padding, recomputation
and ours skipping the lm_head on unlabelled positions are not counted as useful work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
OPTIONAL_HERE = {"wandb"}  # not needed with logger.wandb.enabled=false (imported lazily)
SIDES = (("ours", "ours"), ("trl", "TRL"), ("trl_packing", "TRL packed"))  # bench_train.py runs in the table


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def project_requirements() -> list[str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("bench", []))


def _installed(name: str):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _unmet(req_text: str, errors: list[str], warnings: list[str], who: str, strict: bool) -> None:
    from packaging.requirements import Requirement

    req = Requirement(req_text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return
    have = _installed(req.name)
    if have is None:
        if _norm(req.name) in OPTIONAL_HERE:
            warnings.append(f"{req.name} ({who}) is not installed: fine here, the runs disable W&B")
        else:
            errors.append(f"{req.name}{req.specifier} ({who}) is not installed")
    elif req.specifier and not req.specifier.contains(have, prereleases=True):
        (errors if strict else warnings).append(f"{req.name} {have} is installed, {who} asks for {req.specifier}")


def cmd_deps(a) -> None:
    from importlib.metadata import distribution

    errors: list[str] = []
    warnings: list[str] = []
    for r in project_requirements():
        _unmet(r, errors, warnings, "pyproject.toml", strict=True)
    wheels = sorted(Path(a.wheels).glob("*.whl")) if a.wheels else []
    for whl in wheels:
        name = whl.name.split("-")[0]
        if _installed(name) is None:
            continue  # reported above if the project needs it
        for r in distribution(name).requires or []:
            _unmet(r, errors, warnings, name, strict=False)
    for w in warnings:
        print(f"[deps] warning: {w}")
    for e in errors:
        print(f"[deps] ERROR: {e}")
    if errors:
        raise SystemExit("[deps] missing or wrong packages: add their wheels to bench/wheels (docs/gpu.md)")
    versions = {}
    for mod in ("torch", "transformers", "peft", "lightning", "bitsandbytes", "hydra", "omegaconf", "datasets",
                "trl", "datasketch", "fastapi", "uvicorn", "httpx", "optuna", "recipe_runner.runner"):
        try:
            m = __import__(mod, fromlist=["_"])
        except Exception as exc:  # noqa: BLE001 - report every broken import, then fail
            errors.append(f"import {mod}: {type(exc).__name__}: {exc}")
            continue
        versions[mod] = getattr(m, "__version__", "ok")
    print("[deps] imports: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if errors:
        raise SystemExit("[deps] " + "; ".join(errors))
    import torch

    cuda = torch.cuda.is_available()
    print(f"[deps] torch {torch.__version__} (CUDA {torch.version.cuda}): "
          + (f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}" if cuda else "no CUDA device"))
    print("[deps] ok")


def _run_summary(work: Path, model: str) -> dict:
    found = sorted((work / "runs" / model).rglob("summary.json"))
    if not found:
        return {"error": f"no summary.json under {work / 'runs' / model}"}
    s = json.loads(found[-1].read_text())
    return {"path": str(found[-1]), "tok_s": s.get("tokens_per_second"), "peak_cuda_mb": s.get("peak_cuda_mb"),
            "peak_rss_mb": s.get("peak_rss_mb"), "fit_seconds": s.get("fit_seconds"),
            "wall_seconds": s.get("wall_seconds"), "precision": s.get("precision"), "steps": s.get("global_step"),
            "trained_tokens": s.get("trained_tokens"), "eval_seconds": s.get("eval_seconds"),
            "eval_fraction": s.get("eval_fraction")}


def _bench(work: Path, model: str) -> dict | None:
    path = work / f"bench_{model}.json"
    return json.loads(path.read_text())["results"] if path.exists() else None


def _fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def _median(r: dict) -> float | None:
    """A bench run's per-step median tok/s (its mean where an older JSON has no per-step figures)."""
    return r.get("tok_s_median") or r.get("tok_s")


def _spread(r: dict) -> str:
    if not r or "tok_s" not in r:
        return "-"
    if r.get("tok_s_min") is None:
        return f"{r['tok_s']:,.0f}"
    return f"{r['tok_s_median']:,.0f} [{r['tok_s_min']:,.0f}-{r['tok_s_max']:,.0f}]"


def flops_per_token(model: str, trainable: int, attn_len: float) -> dict:
    """4 N_frozen + 6 N_lora + 6 L d_attn s for one bench/gpu_models.py config (see the docstring)."""
    from gpu_models import CONFIGS

    c = CONFIGS[model]
    d, layers, ff, vocab = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    head = c.get("head_dim") or d // c["num_attention_heads"]
    d_attn, d_kv = c["num_attention_heads"] * head, c["num_key_value_heads"] * head
    n_frozen = layers * (d * d_attn + 2 * d * d_kv + d_attn * d + 3 * d * ff) + d * vocab  # + lm_head
    attention = 6 * layers * d_attn * attn_len
    return {"n_frozen": n_frozen, "n_lora": trainable, "attn_len": attn_len, "attention": attention,
            "flops": 4 * n_frozen + 6 * trainable + attention}


def _peak(work: Path) -> dict | None:
    path = work / "peak.json"
    return json.loads(path.read_text()) if path.exists() else None


def cmd_peak(a) -> None:
    """bf16 matmul TFLOP/s on this machine's GPU (best of 5 rounds), into DIR/peak.json."""
    import time

    import torch

    cuda = torch.cuda.is_available()
    if a.cuda and not cuda:
        raise SystemExit("[gpu_check] peak: no CUDA device")
    n, rounds, iters = (8192, 5, 20) if cuda else (512, 3, 3)  # CPU: plumbing only
    dev = "cuda" if cuda else "cpu"
    x = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
    y = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
    for _ in range(3):
        torch.matmul(x, y)
    best = float("inf")
    for _ in range(rounds):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(iters):
                torch.matmul(x, y)
            end.record()
            torch.cuda.synchronize()
            secs = start.elapsed_time(end) / 1000 / iters
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.matmul(x, y)
            secs = (time.perf_counter() - t0) / iters
        best = min(best, secs)
    out = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "cuda": cuda, "n": n, "dtype": "bfloat16",
           "rounds": rounds, "iters": iters, "seconds": best, "tflops": 2 * n**3 / best / 1e12,
           "meaningful": cuda}
    Path(a.work, "peak.json").write_text(json.dumps(out, indent=2))
    print(f"[gpu_check] bf16 matmul peak: {out['tflops']:,.1f} TFLOP/s on {out['device']} ({n}x{n}, best of "
          f"{rounds} x {iters})" + ("" if cuda else " -- CPU stand-in, meaningless"))


def cmd_run(a) -> None:
    """One run.py result: summary.json present, tokens/s > 0, CUDA memory recorded (with --cuda)."""
    r = _run_summary(Path(a.work), a.model)
    if "error" in r:
        raise SystemExit(f"[gpu_check] {a.model} run.py: {r['error']}")
    cuda = f"{r['peak_cuda_mb']:,.0f} MB" if r["peak_cuda_mb"] else "none"
    print(f"[gpu_check] {a.model} run.py: {r['steps']} steps, {r['tok_s'] or 0:,.0f} tok/s, peak CUDA {cuda}, "
          f"{r['precision']}, fit {r['fit_seconds'] or 0:.0f} s, wall {r['wall_seconds'] or 0:.0f} s ({r['path']})")
    if not r["tok_s"]:
        raise SystemExit(f"[gpu_check] {a.model} run.py: no tokens_per_second in {r['path']}")
    if a.cuda and not r["peak_cuda_mb"]:
        raise SystemExit(f"[gpu_check] {a.model} run.py: no CUDA memory in {r['path']}: it did not train on the GPU")
    if a.eval:
        if not r["eval_seconds"]:
            raise SystemExit(f"[gpu_check] {a.model} run.py: the evaluation was on but eval_seconds is "
                             f"{r['eval_seconds']} in {r['path']}")
        print(f"[gpu_check] {a.model} run.py evaluation: {r['eval_seconds']:.1f} s, "
              f"{100 * (r['eval_fraction'] or 0):.0f} % of the run's {r['wall_seconds'] or 0:.0f} s")


def cmd_bench(a) -> None:
    """One bench_train.py --json result: every run present and without error (bench_train itself exits 0)."""
    results = _bench(Path(a.work), a.model)
    if results is None:
        raise SystemExit(f"[gpu_check] {a.model} bench_train: no bench_{a.model}.json")
    bad = [f"{n}: {r['error']}" for n, r in results.items() if "error" in r]
    for n, r in results.items():
        if "error" not in r:
            cuda = f"{r['peak_cuda_mb']:,.0f} MB" if r.get("peak_cuda_mb") else "none"
            print(f"[gpu_check] {a.model} bench {n}: {_spread(r)} tok/s (per-step median [min-max]; mean "
                  f"{r['tok_s']:,.0f}) over {r['timed_steps']} steps, "
                  f"peak CUDA {cuda}, {r['precision']}")
            if a.cuda and not r.get("peak_cuda_mb"):
                bad.append(f"{n}: no CUDA memory recorded")
    if bad:
        raise SystemExit(f"[gpu_check] {a.model} bench_train failed: " + "; ".join(bad))


def _print_rows(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x and y else None


def cmd_table(a) -> None:
    work = Path(a.work)
    failures: list[str] = []
    report = {}
    peak = _peak(work)
    if peak is None:
        failures.append(f"{work / 'peak.json'} is missing (gpu_report.py peak): no MFU")
    for model in a.models.split(","):
        run, bench = _run_summary(work, model), _bench(work, model)
        if "error" in run:
            failures.append(f"{model} run.py: {run['error']}")
        elif not run["tok_s"]:
            failures.append(f"{model} run.py: summary.json has no tokens_per_second")
        elif a.cuda and not run["peak_cuda_mb"]:
            failures.append(f"{model} run.py: summary.json records no CUDA memory (peak_cuda_mb={run['peak_cuda_mb']})")
        if bench is None:
            failures.append(f"{model} bench_train: {work / f'bench_{model}.json'} is missing")
            bench = {}
        if "ours" not in bench:
            failures.append(f"{model} bench_train: no ours result")
        if not any(n.startswith("trl") for n in bench):
            failures.append(f"{model} bench_train: no trl* result")
        for name, r in bench.items():
            if "error" in r:
                failures.append(f"{model} bench_train {name}: {r['error']}")
            elif a.cuda and not r.get("peak_cuda_mb"):
                failures.append(f"{model} bench_train {name}: no CUDA memory recorded")
        ok = {n: r for n, r in bench.items() if "tok_s" in r}
        facts = ok.get("ours") or next(iter(ok.values()), {})
        flops = flops_per_token(model, facts["trainable_params"], facts["attn_len"]) \
            if "trainable_params" in facts else None
        sides = {}
        for name, r in ok.items():
            med = _median(r)
            sides[name] = {"tok_s_median": med, "tok_s_min": r.get("tok_s_min"), "tok_s_max": r.get("tok_s_max"),
                           "tok_s_mean": r["tok_s"], "timed_steps": r["timed_steps"],
                           "peak_cuda_mb": r.get("peak_cuda_mb"),
                           "ours_over": _ratio(_median(ok["ours"]), med) if "ours" in ok and name != "ours" else None,
                           "mfu": med * flops["flops"] / (peak["tflops"] * 1e12) if flops and peak else None}
        report[model] = {"run_py": run, "bench": bench, "flops_per_token": flops, "sides": sides}

    def side(model: str, name: str, key: str):
        return report[model]["sides"].get(name, {}).get(key)

    # throughput: per-step median tok/s [min-max] and ours over each TRL run
    rows = [["model", "run.py tok/s"] + [f"{label} tok/s" for _, label in SIDES]
            + [f"ours/{label}" for _, label in SIDES[1:]]]
    for model, r in report.items():
        rows.append([model, _fmt(r["run_py"].get("tok_s"))]
                    + [_spread(r["bench"].get(name, {})) for name, _ in SIDES]
                    + [_fmt(side(model, name, "ours_over"), ".2f") + ("x" if side(model, name, "ours_over") else "")
                       for name, _ in SIDES[1:]])
    _print_rows(rows)
    # MFU and memory
    rows = [["model", "GFLOP/token"] + [f"MFU {label}" for _, label in SIDES] + ["run.py peak GPU MB"]
            + [f"{label} peak GPU MB" for _, label in SIDES]]
    for model, r in report.items():
        f = r["flops_per_token"]
        rows.append([model, _fmt(f and f["flops"] / 1e9, ".2f")]
                    + [_fmt(side(model, name, "mfu"), ".1%") for name, _ in SIDES]
                    + [_fmt(r["run_py"].get("peak_cuda_mb"))] + [_fmt(side(model, name, "peak_cuda_mb"))
                                                                  for name, _ in SIDES])
    _print_rows(rows)
    others = sorted({n for r in report.values() for n in r["bench"]} - {n for n, _ in SIDES})
    steps = sorted({v["timed_steps"] for r in report.values() for v in r["sides"].values()})
    print(f"\nrun.py: tokens_per_second and peak_cuda_mb of summary.json (non-pad tokens / seconds in training "
          f"steps). ours / TRL (unpacked, its default) / TRL packed (packing=True): bench/bench_train.py, the same "
          f"timer on every side: the median over {'/'.join(map(str, steps)) or '-'} timed optimizer steps of each "
          f"step's non-pad tok/s [min-max]; ratios of medians"
          + (f"; also run: {', '.join(others)} (in gpu_check.json)" if others else "")
          + ". peak GPU = torch.cuda.max_memory_allocated.")
    if peak:
        print(f"MFU = median tok/s x FLOPs per token (4 N_frozen + 6 N_lora + 6 L d_attn s; docs/gpu.md) / "
              f"{peak['tflops']:,.1f} TFLOP/s, the bf16 matmul peak measured on {peak['device']}"
              + ("" if peak["meaningful"] else " (a CPU stand-in: MFU meaningless)") + ".")
    if a.eval_model:
        run = report.get(a.eval_model, {}).get("run_py", {})
        if run.get("eval_seconds"):
            print(f"evaluation ({a.eval_model} run.py, {run['steps']} steps, generation checks on): "
                  f"{run['eval_seconds']:.1f} s of {run['wall_seconds'] or 0:.0f} s, "
                  f"{100 * (run['eval_fraction'] or 0):.0f} % of the run (the prompt-only baseline and one "
                  "evaluation after training)")
        else:
            failures.append(f"{a.eval_model} run.py: no eval_seconds (the run with the evaluation on)")
    out = {"models": report, "peak": peak, "eval_model": a.eval_model, "failures": failures}
    (work / "gpu_check.json").write_text(json.dumps(out, indent=2, default=str))
    if failures:
        print()
        for f in failures:
            print(f"[table] FAILED: {f}")
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deps")
    d.add_argument("--wheels", default=str(REPO / "bench" / "wheels"))
    k = sub.add_parser("peak")
    k.add_argument("--work", required=True)
    k.add_argument("--cuda", action="store_true", help="fail without a CUDA device")
    t = sub.add_parser("table")
    t.add_argument("--work", required=True)
    t.add_argument("--models", required=True)
    t.add_argument("--cuda", action="store_true", help="require CUDA memory in every result")
    t.add_argument("--eval-model", default="", help="the model whose run.py had the evaluation on")
    for name in ("run", "bench"):
        c = sub.add_parser(name)
        c.add_argument("--work", required=True)
        c.add_argument("--model", required=True)
        c.add_argument("--cuda", action="store_true")
        if name == "run":
            c.add_argument("--eval", action="store_true", help="the evaluation was on: require eval_seconds")
    a = p.parse_args()
    {"deps": cmd_deps, "peak": cmd_peak, "table": cmd_table, "run": cmd_run, "bench": cmd_bench}[a.cmd](a)


if __name__ == "__main__":
    main()
