#!/usr/bin/env bash
# One command for the whole GPU check, sized to finish in under 8 minutes on
# one H100 or H200:
#
#     bash scripts/gpu_check.sh
#
# Steps, each under its own `timeout` and all under one budget
# (GPU_CHECK_BUDGET_S, default 450 s; a step that would overrun it is cut
# short or skipped, and the summary says which):
#   1. build sam_edge._C and sam_edge._C_cuda in place when either is missing
#      (pip install --no-build-isolation --no-deps -e .; torch must be installed);
#   2. every GPU-marked test (pytest -m "gpu or tensorrt" tests/);
#   3. the rest of the Triton / CUDA / TensorRT test files, which use the GPU
#      when one is present;
#   4. benchmarks/bench_attention.py and bench_mask_postprocess.py at small sizes;
#   5. where `import tensorrt` works: a ViT-B fp16 TensorRT bundle (seeded
#      weights) and benchmarks/bench_tensorrt.py on it.
# It writes benchmarks/results/<device>-<date>-gpu-check.json: per step the
# command, exit code, wall time, output tail and pytest's counts, plus
# nvidia-smi's name and driver and the torch / Triton / CUDA versions. The
# benchmarks write their own result files beside it.
#
# Exit status: 0 when every step that ran passed, 1 otherwise. Without a GPU
# (no working nvidia-smi, or torch sees no CUDA device) it says so and exits 0
# having run nothing. PYTHON picks the interpreter (default python3);
# GPU_CHECK_NVIDIA_SMI the nvidia-smi to ask (tests point it elsewhere).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
START_S=$SECONDS
NVIDIA_SMI=${GPU_CHECK_NVIDIA_SMI:-nvidia-smi}

if ! command -v "$NVIDIA_SMI" > /dev/null 2>&1; then
  echo "gpu_check: no GPU here (nvidia-smi not found); nothing to check. Run it on a machine with an NVIDIA GPU."
  exit 0
fi
if ! "$NVIDIA_SMI" -L > /dev/null 2>&1; then
  echo "gpu_check: no GPU here (nvidia-smi -L failed: no driver or no device); nothing to check."
  exit 0
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1; then
  echo "gpu_check: no GPU here (torch.cuda.is_available() is false, or torch is missing); nothing to check."
  exit 0
fi

STEPS="$(mktemp -d)"
WORK="$(mktemp -d)"
trap 'rm -rf "$STEPS" "$WORK"' EXIT
STEP_NO=0
SUMMARY_RESERVE_S=20  # kept back so the summary is always written

# skip NAME WHY CMD...: records a step that was not run, and why.
skip() {
  local name="$1" why="$2"
  shift 2
  STEP_NO=$((STEP_NO + 1))
  BASE="$STEPS/$(printf '%02d' "$STEP_NO")-$name"
  printf '%q ' "$@" > "$BASE.cmd"
  echo "skipped: $why" > "$BASE.status"
  echo "gpu_check: $name skipped ($why)"
}

# step NAME CAP_S CMD...: runs CMD under timeout min(CAP_S, what the budget has left).
step() {
  local name="$1" cap="$2"
  shift 2
  local left=$((BUDGET_S - (SECONDS - START_S) - SUMMARY_RESERVE_S))
  if ((left < 15)); then
    skip "$name" "the ${BUDGET_S} s budget was spent" "$@"
    return 0
  fi
  skip "$name" "started, did not finish" "$@" > /dev/null  # numbers the step and records its command
  local limit=$((cap < left ? cap : left))
  echo "gpu_check: $name (at most ${limit} s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$BASE.log" 2>&1
  echo $? > "$BASE.rc"
  echo $((SECONDS - t0)) > "$BASE.wall"
  echo ran > "$BASE.status"
  tail -n 3 "$BASE.log" | sed 's/^/    /'
  [[ -z "$(tail -c 1 "$BASE.log")" ]] || echo  # a log cut off mid-line
}

if "$PY" -c "import sam_edge._C, sam_edge._C_cuda" > /dev/null 2>&1; then
  skip build "sam_edge._C and sam_edge._C_cuda already import" \
    "$PY" -m pip install -q --no-build-isolation --no-deps -e .
else
  step build 240 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
fi

GPU_FILES=(tests/kernels/test_triton_attention.py tests/postprocess/test_torch_ops.py tests/postprocess/test_cuda.py
           tests/kernels/test_triton_compile.py tests/runtime/test_tensorrt_backend.py
           tests/runtime/test_tensorrt_compat.py tests/runtime/test_cuda_buffers.py)
step tests-gpu-marked 150 "$PY" -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" tests
step tests-gpu-files 180 "$PY" -m pytest -q -p no:cacheprovider -m "not (gpu or tensorrt)" "${GPU_FILES[@]}"

step bench-attention 75 "$PY" benchmarks/bench_attention.py --sizes vit_b --dtypes fp16 bf16 fp32 --repeats 5
step bench-mask-postprocess 60 "$PY" benchmarks/bench_mask_postprocess.py \
  --cases predictor-1080p amg-batch-1080p --dtypes fp32 fp16 --repeats 5

TRT_CMD=("$PY" benchmarks/bench_tensorrt.py --bundles "$WORK/bundles/tensorrt" --models vit_b --precisions fp16
         --repeat 5 --prompt-batch 16 --no-torch)
if "$PY" -c "import tensorrt" > /dev/null 2>&1; then
  step tensorrt-build 150 "$PY" export/build_tensorrt_all.py --models vit_b --precisions fp16 \
    --output "$WORK/bundles" --quiet
  step bench-tensorrt 60 "${TRT_CMD[@]}"
else
  skip bench-tensorrt "import tensorrt failed" "${TRT_CMD[@]}"
fi

"$PY" benchmarks/gpu_common.py gpu-check-summary "$STEPS" "$BUDGET_S"
status=$?
echo "gpu_check: done in $((SECONDS - START_S)) s"
exit $status
