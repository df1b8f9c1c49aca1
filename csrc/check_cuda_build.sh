#!/usr/bin/env bash
# Compile-checks the CUDA sources without a GPU: every .cu file for the
# shipped targets (sm_87 Jetson Orin, sm_89, sm_90 + compute_90 PTX, or
# SAM_EDGE_CUDA_ARCHS), and the pybind11 binding with the host compiler.
# Exits non-zero on the first error. CI runs it wherever nvcc exists.
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

# The same -gencode flags setup.py uses.
read -r -a GENCODE <<< "$(SAM_EDGE_ARCHS="${SAM_EDGE_CUDA_ARCHS:-87;89;90+PTX}" python - <<'PY'
import os, re
flags = []
for item in re.split(r"[;,\s]+", os.environ["SAM_EDGE_ARCHS"].strip()):
    if not item:
        continue
    ptx = item.upper().endswith("+PTX")
    arch = (item[:-4] if ptx else item).replace("sm_", "").replace(".", "")
    flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    if ptx:
        flags += ["-gencode", f"arch=compute_{arch},code=compute_{arch}"]
print(" ".join(flags))
PY
)"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
echo "check_cuda_build: $("$NVCC" --version | tail -1)"
echo "check_cuda_build: targets ${GENCODE[*]}"
for src in csrc/cuda/*.cu; do
  echo "check_cuda_build: nvcc $src"
  "$NVCC" -c "$src" -o "$OUT/$(basename "$src" .cu).o" -std=c++17 -O3 --fmad=false \
    -Xcompiler -fPIC -Icsrc -Icsrc/cuda "${GENCODE[@]}"
done
echo "check_cuda_build: c++ csrc/cuda/bindings_cuda.cpp (syntax)"
PYINC="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
PBINC="$(python -c 'import pybind11; print(pybind11.get_include())')"
"${CXX:-c++}" -std=c++17 -fsyntax-only -Icsrc -Icsrc/cuda -I"$CUDA_HOME/include" -I"$PYINC" -I"$PBINC" \
  csrc/cuda/bindings_cuda.cpp
echo "check_cuda_build: OK"
