#!/usr/bin/env bash
# GPU check, offline, under 8 minutes: QLoRA's CUDA path (NF4 + double quant, bf16-mixed) through
# `python run.py` (one run with the evaluation's generation on) and TRL's SFTTrainer, unpacked and packed,
# through bench/bench_train.py, on randomly initialised models of two real architectures (SmolLM2-135M; a
# ~1B Llama), then tables of per-step median tok/s, MFU, peak GPU memory and the evaluation's share.
#
#   bash bench/gpu_check.sh            # from anywhere; it works in the repository root
#
# Needs: a CUDA GPU; Python 3.12 with torch (CUDA), transformers, peft, lightning; the wheels of everything
# else in bench/wheels/ (docs/gpu.md says which and how to download them); no network.
# Steps (each under `timeout`, all inside GPU_CHECK_BUDGET_S seconds):
#   1. preflight: python, torch, a CUDA device (refuses without one)
#   2. pip install --no-index the wheels in bench/wheels, then the project itself (--no-deps -e .);
#      bench/gpu_report.py deps checks pyproject.toml's dependencies and the imports
#   3. bench/gpu_report.py peak: the GPU's bf16 matmul TFLOP/s (MFU's denominator), DIR/peak.json
#   4. bench/gpu_models.py build: random models (bf16 safetensors + bench/tokenizer/) in a temp folder
#   5. per model: python run.py ... (train.max_steps, W&B off); summary.json must exist. The evaluation's
#      generation checks run for GPU_CHECK_EVAL_MODEL only (4 prompts per set, 1 conversation, 16 new tokens);
#      the other models run with eval.checks=false (the general-loss validation stays)
#   6. per model: python bench/bench_train.py --only ours,trl,trl_packing ... --json (same data, model, LoRA, NF4)
#   7. bench/gpu_report.py table: the tables, DIR/gpu_check.json; non-zero exit on any missing result
#
# Knobs (environment): PYTHON (python3), GPU_CHECK_MODELS (smollm2-135m,llama-1b), GPU_CHECK_STEPS (5,
# run.py optimizer steps), GPU_CHECK_BENCH_STEPS (12) and GPU_CHECK_BENCH_WARMUP (2: each bench figure is the
# median of 10 timed steps), GPU_CHECK_BENCH_RUNS (ours,trl,trl_packing), GPU_CHECK_EVAL_MODEL (the first of
# GPU_CHECK_MODELS; `none`: no generation checks), GPU_CHECK_RECIPE (alex_persona), GPU_CHECK_PRECISION (bf16-mixed), GPU_CHECK_TRL_GC (recipe:
# TRL gets the recipe's gradient checkpointing, as ours; `default` leaves TRL's own on), GPU_CHECK_EXTRA
# (more Hydra overrides for both sides), GPU_CHECK_WORKDIR (a new /tmp folder), GPU_CHECK_SAVE (on any
# exit, copy gpu_check.json and gpu_check_logs.txt, the tail of every log, there: e.g. $OUT), GPU_CHECK_BUDGET_S (455: all steps), GPU_CHECK_STEP_TIMEOUT_S
# (each step's own limit, 60-210 s by default), GPU_CHECK_SKIP_INSTALL=1 (use the
# environment as it is), GPU_CHECK_KEEP=1 (keep the model folders), GPU_CHECK_ALLOW_CPU=1 (plumbing test
# on a machine without a GPU: no CUDA required, models built on the CPU, the matmul peak a small CPU stand-in;
# its numbers mean nothing).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-455}   # + at most 10 s kill grace + the table: under 8 minutes
MODELS=${GPU_CHECK_MODELS:-smollm2-135m,llama-1b}
STEPS=${GPU_CHECK_STEPS:-5}
BENCH_STEPS=${GPU_CHECK_BENCH_STEPS:-12}
BENCH_WARMUP=${GPU_CHECK_BENCH_WARMUP:-2}
BENCH_RUNS=${GPU_CHECK_BENCH_RUNS:-ours,trl,trl_packing}
EVAL_MODEL=${GPU_CHECK_EVAL_MODEL:-${MODELS%%,*}}
if [[ $EVAL_MODEL == none ]]; then EVAL_MODEL=; fi
RECIPE=${GPU_CHECK_RECIPE:-alex_persona}
PRECISION=${GPU_CHECK_PRECISION:-bf16-mixed}
TRL_GC=${GPU_CHECK_TRL_GC:-recipe}
ALLOW_CPU=${GPU_CHECK_ALLOW_CPU:-0}
read -r -a EXTRA <<<"${GPU_CHECK_EXTRA:-}"
WORK=${GPU_CHECK_WORKDIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$WORK"
CURRENT="start"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }
die() { echo "[gpu_check] FAILED at '$CURRENT': $*" >&2; echo "[gpu_check] logs: $WORK" >&2; exit 1; }
# On any exit: with GPU_CHECK_SAVE, gpu_check.json (if written) and one file with the tail of every log.
save_logs() {
    [[ -n ${GPU_CHECK_SAVE:-} ]] || return 0
    mkdir -p "$GPU_CHECK_SAVE" || return 0
    [[ -f $WORK/gpu_check.json ]] && cp "$WORK/gpu_check.json" "$GPU_CHECK_SAVE/"
    for f in "$WORK"/*.log; do
        [[ -f $f ]] || continue
        echo "===== $(basename "$f") (last 300 lines) ====="
        tail -n 300 "$f" | tr '\r' '\n' | tail -n 300
    done >"$GPU_CHECK_SAVE/gpu_check_logs.txt" 2>/dev/null || true
}
trap 'rc=$?; save_logs; if (( rc != 0 )); then echo "[gpu_check] exit code $rc (step: $CURRENT, logs: $WORK)" >&2; fi' EXIT

# step NAME LIMIT_S LOG CMD...: CMD under `timeout`, output to LOG; on failure its tail and exit 1.
step() {
    local name=$1 limit=$2 log=$3 rc=0 t0 left
    shift 3
    CURRENT=$name
    left=$(( BUDGET - ($(date +%s) - START) ))
    (( left >= 15 )) || die "no time left (${BUDGET} s budget spent)"
    limit=${GPU_CHECK_STEP_TIMEOUT_S:-$limit}
    (( limit <= left )) || limit=$left
    say "$name (timeout ${limit}s; log $log)"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
    if (( rc != 0 )); then
        echo "----- last lines of $log -----" >&2
        tail -n 40 "$log" >&2
        echo "------------------------------" >&2
        (( rc == 124 || rc == 137 )) && die "timed out after ${limit}s"
        die "exit code $rc"
    fi
    say "$name: ok in $(( $(date +%s) - t0 ))s"
}

if [[ -n $EVAL_MODEL && ,$MODELS, != *,$EVAL_MODEL,* ]]; then
    CURRENT=start; die "GPU_CHECK_EVAL_MODEL=$EVAL_MODEL is not one of GPU_CHECK_MODELS=$MODELS (or set it to none)"
fi

# 1. preflight ---------------------------------------------------------------------------------------------
CURRENT=preflight
command -v "$PY" >/dev/null || die "no '$PY' on PATH (set PYTHON=...)"
command -v timeout >/dev/null || die "coreutils' timeout is missing"
say "repository $REPO, work folder $WORK, python $("$PY" -c 'import sys; print(sys.version.split()[0])')"
rc=0
timeout 60 "$PY" - <<'EOF' || rc=$?
import sys
try:
    import torch
except Exception as exc:
    print(f"[gpu_check] torch does not import: {exc}", file=sys.stderr)
    sys.exit(2)
if not torch.cuda.is_available():
    print(f"[gpu_check] no CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda}) "
          "sees none. This check needs a GPU.", file=sys.stderr)
    sys.exit(3)
print(f"[gpu_check] torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s): "
      f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
EOF
if (( rc == 3 )) && [[ $ALLOW_CPU == 1 ]]; then
    say "GPU_CHECK_ALLOW_CPU=1: going on without CUDA (plumbing test; the numbers mean nothing)"
elif (( rc != 0 )); then
    die "preflight: no usable CUDA device (exit code $rc)"
fi
if [[ $ALLOW_CPU == 1 ]]; then DEVICE=cpu; CUDA_FLAG=(); else DEVICE=cuda; CUDA_FLAG=(--cuda); fi

# 2. offline install -----------------------------------------------------------------------------------------
if [[ ${GPU_CHECK_SKIP_INSTALL:-0} == 1 ]]; then
    say "GPU_CHECK_SKIP_INSTALL=1: using the environment as it is"
else
    shopt -s nullglob
    WHEELS=(bench/wheels/*.whl)
    shopt -u nullglob
    (( ${#WHEELS[@]} > 0 )) || { CURRENT=install; die "bench/wheels/ holds no wheels: download them first (docs/gpu.md)"; }
    say "${#WHEELS[@]} wheels, $(du -sh bench/wheels | cut -f1)"
    step "install wheels" 120 "$WORK/install.log" \
        "$PY" -m pip install --no-index --find-links bench/wheels --no-deps --no-cache-dir "${WHEELS[@]}"
    CURRENT="install project"
    "$PY" -c 'import importlib.util as u, sys, setuptools
v = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
sys.exit(0 if v >= (70, 1) or u.find_spec("wheel") else 1)' 2>/dev/null \
        || die "the editable install needs setuptools >= 70.1, or an older setuptools plus 'wheel': add a setuptools wheel to bench/wheels"
    step "install project" 60 "$WORK/install_project.log" \
        "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir -e .
fi
step "dependency check" 60 "$WORK/deps.log" "$PY" bench/gpu_report.py deps
grep '^\[deps\]' "$WORK/deps.log" || true

# 3. the GPU's bf16 matmul peak (MFU's denominator) -----------------------------------------------------------
step "matmul peak" 60 "$WORK/peak.log" "$PY" bench/gpu_report.py peak --work "$WORK" "${CUDA_FLAG[@]}"
grep '^\[gpu_check\]' "$WORK/peak.log" || true

# 4. random models -------------------------------------------------------------------------------------------
step "build models" 120 "$WORK/models.log" \
    "$PY" bench/gpu_models.py build --out "$WORK/models" --models "$MODELS" --device "$DEVICE"
grep '^\[gpu_models\]' "$WORK/models.log" || true

# 5./6. per model: run.py, then bench_train.py ---------------------------------------------------------------
# data.sources.general.answers=source: the check times training; the recipe's self-distilled general data
# would first be regenerated by the random base (1,130 rows, each to max tokens: never EOS), minutes of it
COMMON=(model.quant=nf4 model.double_quant=true "train.precision=$PRECISION" "paths.cache_dir=$WORK/cache"
    data.sources.general.answers=source)
# the generation checks, timed on one model: the baseline before training and one evaluation after it
EVAL_ON=(eval.checks=true eval.max_prompts=4 eval.max_dialogues=1 eval.max_new_tokens=16 eval.max_still_answers=4
    eval.heldout_dialogues=0)
IFS=, read -r -a MODEL_LIST <<<"$MODELS"
for m in "${MODEL_LIST[@]}"; do
    limit_run=90; limit_bench=180
    if [[ $m == llama-1b ]]; then limit_run=120; limit_bench=210; fi
    EVAL_ARGS=(eval.checks=false); EVAL_FLAG=()
    if [[ $m == "$EVAL_MODEL" ]]; then EVAL_ARGS=("${EVAL_ON[@]}"); EVAL_FLAG=(--eval); limit_run=$(( limit_run + 60 )); fi
    step "run.py $m" "$limit_run" "$WORK/run_$m.log" \
        "$PY" run.py "recipe=$RECIPE" "model.name_or_path=$WORK/models/$m" "${COMMON[@]}" \
        "train.max_steps=$STEPS" "${EVAL_ARGS[@]}" logger.wandb.enabled=false "paths.output_dir=$WORK/runs/$m" \
        "${EXTRA[@]}"
    CURRENT="run.py $m: summary.json"
    "$PY" bench/gpu_report.py run --work "$WORK" --model "$m" "${CUDA_FLAG[@]}" "${EVAL_FLAG[@]}" \
        || die "see the line above"

    step "bench_train $m" "$limit_bench" "$WORK/bench_$m.log" \
        "$PY" bench/bench_train.py --recipe "$RECIPE" --steps "$BENCH_STEPS" --warmup "$BENCH_WARMUP" \
        --only "$BENCH_RUNS" --trl-gc "$TRL_GC" --json "$WORK/bench_$m.json" \
        "model.name_or_path=$WORK/models/$m" "${COMMON[@]}" "${EXTRA[@]}"
    CURRENT="bench_train $m: results"
    "$PY" bench/gpu_report.py bench --work "$WORK" --model "$m" "${CUDA_FLAG[@]}" || die "see the line above"
done

# 7. the tables ----------------------------------------------------------------------------------------------
CURRENT=table
"$PY" bench/gpu_report.py table --work "$WORK" --models "$MODELS" "${CUDA_FLAG[@]}" --eval-model "$EVAL_MODEL" \
    || die "incomplete or failed results (see above)"
[[ ${GPU_CHECK_KEEP:-0} == 1 ]] || rm -rf "$WORK/models"
echo
say "OK: recipe $RECIPE, $PRECISION, NF4 double quant; run.py $STEPS steps (generation checks: ${EVAL_MODEL:-none}), bench $BENCH_STEPS steps ($BENCH_WARMUP untimed), runs $BENCH_RUNS; results $WORK/gpu_check.json"
