#!/usr/bin/env bash
# Install sam-edge with its dev/test dependencies.
# Into $PYTHON or python3, or into the project virtualenv .venv where pip may not install
# into that interpreter (PEP 668) or SAM_EDGE_VENV=1 (scripts/python_env.sh says which).
#   bash scripts/setup.sh --dry-run    print the interpreter it would install into, change nothing
# Idempotent: a second run only re-checks. torch/torchvision are pinned to the builds this
# project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python_env.sh
if [ "${1:-}" = --dry-run ]; then
  sam_edge_python
  exit 0
fi
PY=$(sam_edge_python create)
$PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
$PY -m pip install -q setuptools wheel "pybind11>=2.12"
# --no-build-isolation: build the _C extension against the pybind11 just installed.
$PY -m pip install -q --no-build-isolation -e ".[dev]"
$PY -m sam_edge.cli info
