"""Helpers of bench/gpu_check.sh: the dependency check after the offline install, and the closing table.

    python bench/gpu_report.py deps [--wheels bench/wheels]
    python bench/gpu_report.py run|bench --work DIR --model NAME [--cuda]
    python bench/gpu_report.py table --work DIR --models smollm2-135m,llama-1b [--cuda]

deps: every dependency in pyproject.toml (and [bench]'s trl) must be installed in a version its specifier
allows (wandb may be missing: the check runs with logger.wandb.enabled=false and the project imports wandb
only when W&B is on); what the wheels in bench/wheels need themselves is checked too (missing: error; a
version outside the range they declare: warning, as the image's own packages win). Then the imports the
runs need, with versions, and what torch sees. Exit 1 on any error.

run / bench: one model's run.py summary or bench_train.py JSON, checked and printed in a line (exit 1 when
missing or failed: bench_train.py itself exits 0 when one of its runs fails).
table: reads DIR/runs/<model>/**/summary.json (python run.py) and DIR/bench_<model>.json
(bench/bench_train.py --json) for each model, prints one table and writes DIR/gpu_check.json. Exit 1 when a run is missing or failed, or, with --cuda, when a run
recorded no CUDA memory (it did not train on the GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONAL_HERE = {"wandb"}  # not needed with logger.wandb.enabled=false (imported lazily)


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
                "trl", "datasketch", "recipe_runner.runner"):
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
            "trained_tokens": s.get("trained_tokens")}


def _bench(work: Path, model: str) -> dict | None:
    path = work / f"bench_{model}.json"
    return json.loads(path.read_text())["results"] if path.exists() else None


def _fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


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


def cmd_bench(a) -> None:
    """One bench_train.py --json result: every run present and without error (bench_train itself exits 0)."""
    results = _bench(Path(a.work), a.model)
    if results is None:
        raise SystemExit(f"[gpu_check] {a.model} bench_train: no bench_{a.model}.json")
    bad = [f"{n}: {r['error']}" for n, r in results.items() if "error" in r]
    for n, r in results.items():
        if "error" not in r:
            cuda = f"{r['peak_cuda_mb']:,.0f} MB" if r.get("peak_cuda_mb") else "none"
            print(f"[gpu_check] {a.model} bench {n}: {r['tok_s']:,.0f} tok/s over {r['timed_steps']} steps, "
                  f"peak CUDA {cuda}, {r['precision']}")
            if a.cuda and not r.get("peak_cuda_mb"):
                bad.append(f"{n}: no CUDA memory recorded")
    if bad:
        raise SystemExit(f"[gpu_check] {a.model} bench_train failed: " + "; ".join(bad))


def cmd_table(a) -> None:
    work = Path(a.work)
    failures: list[str] = []
    report = {}
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
        trl_name = next((n for n in bench if n.startswith("trl")), None)
        for name in ("ours", trl_name):
            r = bench.get(name) if name else None
            if r is None:
                failures.append(f"{model} bench_train: no {name or 'trl*'} result")
            elif "error" in r:
                failures.append(f"{model} bench_train {name}: {r['error']}")
            elif a.cuda and not r.get("peak_cuda_mb"):
                failures.append(f"{model} bench_train {name}: no CUDA memory recorded")
        ours, trl = bench.get("ours", {}), bench.get(trl_name, {}) if trl_name else {}
        ratio = ours["tok_s"] / trl["tok_s"] if "tok_s" in ours and "tok_s" in trl else None
        report[model] = {"run_py": run, "bench": bench, "trl_run": trl_name, "ours_over_trl_tok_s": ratio}

    cols = ["model", "run.py tok/s", "run.py peak GPU MB", "ours tok/s", "TRL tok/s", "ours/TRL",
            "ours peak GPU MB", "TRL peak GPU MB"]
    rows = [cols]
    for model, r in report.items():
        run, ours, trl = r["run_py"], r["bench"].get("ours", {}), r["bench"].get(r["trl_run"] or "", {})
        rows.append([model, _fmt(run.get("tok_s")), _fmt(run.get("peak_cuda_mb")), _fmt(ours.get("tok_s")),
                     _fmt(trl.get("tok_s")), _fmt(r["ours_over_trl_tok_s"], ".2f") + ("x" if r["ours_over_trl_tok_s"] else ""),
                     _fmt(ours.get("peak_cuda_mb")), _fmt(trl.get("peak_cuda_mb"))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    print()
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    trl_names = sorted({r["trl_run"] for r in report.values() if r["trl_run"]})
    print(f"\nrun.py: tokens_per_second and peak_cuda_mb of summary.json (non-pad tokens / seconds in training "
          f"steps). ours / TRL: bench/bench_train.py, the same timer on both sides (non-pad tokens over the "
          f"timed optimizer steps); TRL = {', '.join(trl_names) or '-'}; peak GPU = torch.cuda.max_memory_allocated.")
    out = {"models": report, "failures": failures}
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
    t = sub.add_parser("table")
    t.add_argument("--work", required=True)
    t.add_argument("--models", required=True)
    t.add_argument("--cuda", action="store_true", help="require CUDA memory in every result")
    for name in ("run", "bench"):
        c = sub.add_parser(name)
        c.add_argument("--work", required=True)
        c.add_argument("--model", required=True)
        c.add_argument("--cuda", action="store_true")
    a = p.parse_args()
    {"deps": cmd_deps, "table": cmd_table, "run": cmd_run, "bench": cmd_bench}[a.cmd](a)


if __name__ == "__main__":
    main()
