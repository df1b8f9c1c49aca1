#!/usr/bin/env bash
# Every size at every CPU precision, timed against the official package, one at a time:
#   bash scripts/bench_all_sizes.sh [CHECKPOINT_DIR]
# For ViT-B, ViT-L and ViT-H at fp32, int8 and int8-dynamic (set PRECISIONS to
# change, e.g. PRECISIONS="fp32 fp16"): build the bundle, run
# `sam-edge bench --reference --validate` on it (JSON + PNG into
# benchmarks/results/), then delete the bundle before the next, so a 24 GB
# machine holds one model's bundle, its reference and its validation at a time.
# CHECKPOINT_DIR holds the official sam_vit_{b_01ec64,l_0b3195,h_4b8939}.pth;
# without it every model has seeded random weights (timings real, masks not).
# Hours on 2 cores; run it on a quiet machine. Env: TAG (host name in the
# results, default cpu-<cores>core), REPEAT (default 3), WORK (bundle scratch
# directory, default out/bench-all), NOTE (a note stored in every JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
CKPT_DIR=${1:-}
PY=${PYTHON:-python3}
TAG=${TAG:-cpu-$(nproc)core}
REPEAT=${REPEAT:-3}
WORK=${WORK:-out/bench-all}
PRECISIONS=${PRECISIONS:-"fp32 int8 int8-dynamic"}
DATE=$(date -u +%Y-%m-%d)
declare -A CKPT_NAME=([vit_b]=sam_vit_b_01ec64.pth [vit_l]=sam_vit_l_0b3195.pth [vit_h]=sam_vit_h_4b8939.pth)
mkdir -p "$WORK" benchmarks/results
failed=()
for model in vit_b vit_l vit_h; do
  weights=()
  if [ -n "$CKPT_DIR" ]; then
    ckpt="$CKPT_DIR/${CKPT_NAME[$model]}"
    [ -f "$ckpt" ] || { echo "bench_all_sizes: missing $ckpt" >&2; exit 1; }
    weights=(--checkpoint "$ckpt")
  fi
  for precision in $PRECISIONS; do
    bundle="$WORK/$model-$precision"
    out="benchmarks/results/$TAG-$DATE-bench-$model-$precision"
    notes=()
    [ -n "${NOTE:-}" ] && notes=(--note "$NOTE")
    echo "== $model $precision" >&2
    if $PY -m sam_edge.cli build --model "$model" "${weights[@]}" --precision "$precision" \
         --output "$bundle" --overwrite --quiet &&
       $PY -m sam_edge.cli bench "$bundle" "${weights[@]}" --reference --validate --repeat "$REPEAT" \
         --tag "$TAG" "${notes[@]}" --json "$out.json" --plot "$out.png"; then
      echo "== $model $precision: $out.json" >&2
    else
      failed+=("$model-$precision")
    fi
    rm -rf "$bundle"  # one bundle on disk and in memory at a time
  done
done
$PY scripts/perf_table.py
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench_all_sizes: failed: ${failed[*]}" >&2
  exit 1
fi
