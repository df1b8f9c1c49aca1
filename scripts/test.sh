#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python_env.sh
PY=$(sam_edge_python)
exec $PY -m pytest -q -p no:cacheprovider --durations=15 "$@"
