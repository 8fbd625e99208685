#!/usr/bin/env bash
# llama.cpp's llama-server for serve.engine=llamacpp, built once and linked into .venv/bin.
#
#   bash setup.sh --llamacpp          (calls this; or: bash scripts/build_llamacpp.sh [VENV])
#
# The package registry has no llama.cpp wheel and Debian 12 no package, so this builds the
# llama.cpp that llama-cpp-python's source release vendors (pinned below: the same sources every
# time). Only the llama-server target, statically linked, for this CPU's instructions
# (GGML_NATIVE): ~5 min on 2 cores, once. The binary is cached per version and CPU under
# $RECIPE_RUNNER_CACHE/llama.cpp (default ~/.cache/recipe-runner), so a second clone links it. The
# sources are fetched with the system python's pip: setup.sh runs this while it upgrades the venv's.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
VERSION=0.3.36  # llama-cpp-python's release; its vendor/llama.cpp is what gets built
cache=${RECIPE_RUNNER_CACHE:-$HOME/.cache/recipe-runner}/llama.cpp
cpu=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-8)  # a native build runs only where it was built
dest=$cache/$VERSION-$cpu

if [ ! -x "$dest/bin/llama-server" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "building llama-server (llama.cpp from llama-cpp-python $VERSION, ~5 min on 2 cores, once) ..."
  "${PYTHON:-python3}" -m pip download --quiet --no-binary llama-cpp-python --no-deps "llama-cpp-python==$VERSION" -d "$work"
  tar xzf "$work"/llama_cpp_python-$VERSION.tar.gz -C "$work"
  src=$work/llama_cpp_python-$VERSION/vendor/llama.cpp
  # no web UI download, no HTTPS client, no tests or examples: the server alone, nothing fetched
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF > "$work/cmake.log" 2>&1 \
    || { tail -30 "$work/cmake.log"; exit 1; }
  started=$(date +%s)
  cmake --build "$work/build" --target llama-server -j "$(nproc)" > "$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log"; exit 1; }
  mkdir -p "$dest/bin"
  cp "$work/build/bin/llama-server" "$dest/bin/llama-server.tmp" && mv "$dest/bin/llama-server.tmp" "$dest/bin/llama-server"
  echo "built llama-server in $(( $(date +%s) - started )) s: $dest/bin/llama-server"
fi
ln -sf "$dest/bin/llama-server" "$VENV/bin/llama-server"
"$VENV/bin/llama-server" --version 2>&1 | grep -m1 version || true
