#!/usr/bin/env bash
# Compile-checks the CUDA sources without a GPU and without installing: every
# .cu file for setup.py's targets (or SAM_EDGE_CUDA_ARCHS, e.g. "80" for a
# quick pass), and the pybind11 binding with the host compiler. Exits non-zero
# on the first error. A developer tool: CI compiles the same sources for every
# target through `pip install -e .`, whose build fails on any nvcc error, and
# tests/postprocess/test_cuda.py checks the built module holds each target.
set -euo pipefail
cd "$(dirname "$0")/.."

# Same search order as setup.py: CUDA_HOME, CUDA_PATH, /usr/local/cuda, PATH.
NVCC="${NVCC:-}"
for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  if [[ -z "$NVCC" && -n "$home" && -x "$home/bin/nvcc" ]]; then NVCC="$home/bin/nvcc"; fi
done
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" ]]; then
  echo "check_cuda_build: nvcc not found (CUDA_HOME, CUDA_PATH, /usr/local/cuda, PATH); nothing to check" >&2
  exit 2
fi
CUDA_HOME="$(cd "$(dirname "$(readlink -f "$NVCC")")/.." && pwd)"
if [[ ! -f "$CUDA_HOME/include/cuda_runtime_api.h" ]]; then
  echo "check_cuda_build: no cuda_runtime_api.h under $CUDA_HOME/include; set CUDA_HOME" >&2
  exit 1
fi

# setup.py's own -gencode flags (its DEFAULT_CUDA_ARCHS, or SAM_EDGE_CUDA_ARCHS).
read -r -a GENCODE <<< "$(python setup.py --print-cuda-gencode)"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
echo "check_cuda_build: $("$NVCC" --version | tail -1)"
echo "check_cuda_build: targets ${GENCODE[*]}"
for src in csrc/cuda/*.cu; do
  echo "check_cuda_build: nvcc $src"
  "$NVCC" -c "$src" -o "$OUT/$(basename "$src" .cu).o" -std=c++17 -O3 --fmad=false \
    --threads "${SAM_EDGE_NVCC_THREADS:-0}" \
    -Xcompiler -fPIC -Icsrc -Icsrc/cuda "${GENCODE[@]}"
done
echo "check_cuda_build: c++ csrc/cuda/bindings_cuda.cpp (syntax)"
PYINC="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
PBINC="$(python -c 'import pybind11; print(pybind11.get_include())')"
"${CXX:-c++}" -std=c++17 -fsyntax-only -Icsrc -Icsrc/cuda -I"$CUDA_HOME/include" -I"$PYINC" -I"$PBINC" \
  csrc/cuda/bindings_cuda.cpp
echo "check_cuda_build: OK"
