#!/usr/bin/env bash
# Create the separate virtual environment that runs the reference EAGLE code (PyPI eagle-llm).
#
#   bash eagle_v2/setup_reference_env.sh [VENV_DIR]      (default: $EAGLE_REF_VENV or /work/venv_eagle)
#
# Order matters: CPU torch first, then eagle-llm with --no-deps (its metadata pins nothing for
# torch and would pull the CUDA build), then the pinned versions its code was written for.
# Idempotent: re-running only checks and fills in what is missing.
set -euo pipefail

VENV="${1:-${EAGLE_REF_VENV:-/work/venv_eagle}}"
PYTHON="${PYTHON:-python3.11}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EAGLE_VERSION="1.2.1"
TORCH_VERSION="2.13.0"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found; set PYTHON=/path/to/python3 (3.9-3.11 work with these pins)" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

"${PIP[@]}" "torch==${TORCH_VERSION}"
"${PIP[@]}" --no-deps "eagle-llm==${EAGLE_VERSION}"
"${PIP[@]}" -r "$HERE/requirements-reference.txt"

# The reference must not have pulled a different torch, and its model code must import.
"$VENV/bin/python" - <<EOF
import importlib.metadata as md
import torch, transformers
assert torch.__version__.startswith("${TORCH_VERSION}"), f"reference venv has torch {torch.__version__}"
from eagle.model.ea_model import EaModel  # noqa: F401  (the reference entry point)
print(f"reference env ready: eagle-llm {md.version('eagle-llm')}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, cuda available: {torch.cuda.is_available()}")
EOF
echo "use it with: python -m eagle_v2.compare --ref_python $VENV/bin/python ..."
