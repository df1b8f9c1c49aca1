#!/usr/bin/env bash
# Install sam-edge with its dev/test dependencies into the current Python.
# Idempotent: a second run only re-checks. torch/torchvision are pinned to the
# builds this project is tested with (they install from local disk here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
$PY -m pip install -q setuptools wheel "pybind11>=2.12"
# --no-build-isolation: build the _C extension against the pybind11 just installed.
$PY -m pip install -q --no-build-isolation -e ".[dev]"
$PY -m sam_edge.cli info
