#!/usr/bin/env bash
# Build and validate every ONNX Runtime bundle for one checkpoint.
#
#   export/build_all.sh vit_b checkpoints/sam_vit_b_01ec64.pth bundles/
#
# Writes bundles/<model>-<precision>/ for fp32, fp16, int8 (static QDQ,
# calibrated on scikit-image's photos unless CALIB_IMAGES is set) and
# int8-dynamic, then validates each against the checkpoint (table + JSON).
set -euo pipefail
model=${1:?model: vit_b, vit_l or vit_h}
checkpoint=${2:?checkpoint .pth}
out=${3:-bundles}
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
calib=()
if [[ -n "${CALIB_IMAGES:-}" ]]; then calib=(--calib-images "$CALIB_IMAGES"); fi
for precision in fp32 fp16 int8 int8-dynamic; do
  bundle="$out/$model-$precision"
  python "$root/export/sam_edge_export.py" build --model "$model" --checkpoint "$checkpoint" \
    --precision "$precision" --output "$bundle" --overwrite "${calib[@]}"
  python "$root/export/sam_edge_export.py" validate "$bundle" --checkpoint "$checkpoint" \
    --json "$bundle.validation.json" || echo "validation of $bundle FAILED (see $bundle.validation.json)"
done
