#!/usr/bin/env bash
# The project's virtual environment at .venv: the daemon, its tests and the dev tools.
# torch is pinned in the same pip call as everything else so no dependency can pull a different (CUDA) build.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/retry.sh"
cd "$(dirname "$0")/../.."
PY="${ACE_PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    echo "[10_python] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "[10_python] installing the project and its test dependencies"
retry .venv/bin/pip install -q -c .ci/constraints.txt torch==2.13.0 -e '.[dev,ray]'
.venv/bin/python -c "import torch, diffusers, transformers, aiohttp, ace_protocol, bridge_server; print('[10_python] torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
