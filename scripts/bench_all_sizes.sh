#!/usr/bin/env bash
# Every size at every CPU precision, timed against the official package:
#   bash scripts/bench_all_sizes.sh [CHECKPOINT_DIR]
# Per size (MODELS, default "vit_b vit_l vit_h"): build the bundles of PRECISIONS
# (default "fp32 int8 int8-dynamic"), then one `sam-edge bench --reference` over
# them, so the official package is timed once per size; JSON and PNG go to
# benchmarks/results/<TAG>-<date>-bench-<model>.{json,png}, and the bundles are
# deleted before the next size, so a 24 GB machine holds one size at a time.
# CHECKPOINT_DIR holds the official sam_vit_{b_01ec64,l_0b3195,h_4b8939}.pth;
# without it every model has seeded random weights (timings real, masks not).
# Run it on a quiet machine: anything else running, even niced from another
# session, takes CPU from the run.
# Env: TAG (host name in the results, default cpu-<cores>core), REPEAT (timed
# passes, default 2), IMAGES (a directory; default scikit-image's photos),
# QUERIES (default 1,10,100), VALIDATE (1: embed a validation, the default; 0: not),
# WORK (bundle scratch, default out/bench-all), NOTE (a note stored in every JSON).
# The committed 2026-12-03 runs: ViT-B with the defaults; ViT-L with
# IMAGES=<astronaut and coffee> REPEAT=1 QUERIES=1,10; ViT-H the same with VALIDATE=0.
set -uo pipefail
cd "$(dirname "$0")/.."
CKPT_DIR=${1:-}
PY=${PYTHON:-python3}
TAG=${TAG:-cpu-$(nproc)core}
MODELS=${MODELS:-"vit_b vit_l vit_h"}
PRECISIONS=${PRECISIONS:-"fp32 int8 int8-dynamic"}
WORK=${WORK:-out/bench-all}
DATE=$(date -u +%Y-%m-%d)
declare -A CKPT_NAME=([vit_b]=sam_vit_b_01ec64.pth [vit_l]=sam_vit_l_0b3195.pth [vit_h]=sam_vit_h_4b8939.pth)
options=(--reference --repeat "${REPEAT:-2}" --queries "${QUERIES:-1,10,100}" --tag "$TAG")
[ "${VALIDATE:-1}" = 1 ] && options+=(--validate)
[ -n "${IMAGES:-}" ] && options+=(--images "$IMAGES")
[ -n "${NOTE:-}" ] && options+=(--note "$NOTE")
mkdir -p "$WORK" benchmarks/results
failed=()
for model in $MODELS; do
  weights=()
  if [ -n "$CKPT_DIR" ]; then
    ckpt="$CKPT_DIR/${CKPT_NAME[$model]}"
    [ -f "$ckpt" ] || { echo "bench_all_sizes: missing $ckpt" >&2; exit 1; }
    weights=(--checkpoint "$ckpt")
  fi
  bundles=()
  for precision in $PRECISIONS; do
    bundle="$WORK/$model-$precision"
    echo "== $model $precision: build" >&2
    if $PY -m sam_edge.cli build --model "$model" "${weights[@]}" --precision "$precision" \
         --output "$bundle" --overwrite --quiet; then
      bundles+=("$bundle")
    else
      failed+=("build $model-$precision")
    fi
  done
  out="benchmarks/results/$TAG-$DATE-bench-$model"
  echo "== $model: bench ${bundles[*]}" >&2
  if [ ${#bundles[@]} -gt 0 ] &&
     $PY -m sam_edge.cli bench "${bundles[@]}" "${weights[@]}" "${options[@]}" --json "$out.json" --plot "$out.png"; then
    echo "== $model: $out.json" >&2
  else
    failed+=("bench $model")
  fi
  rm -rf "${bundles[@]}"  # one size's bundles on disk at a time
done
$PY scripts/perf_table.py --compact
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench_all_sizes: failed: ${failed[*]}" >&2
  exit 1
fi
