#!/usr/bin/env bash
# The main job, end to end on a fresh machine:
#   bash scripts/demo.sh [CHECKPOINT.pth]
# Sets up, builds a ViT-B ONNX Runtime bundle (the embedded CPU default),
# segments real photos (scikit-image's bundled astronaut and coffee) with point
# and box prompts, writes overlay PNGs under out/demo/ and prints the stage
# latencies. Without a checkpoint it uses seeded random weights and says so:
# the pipeline and timings are real, the masks are not.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${1:-}
bash scripts/setup.sh >/dev/null
source scripts/python_env.sh
PY=$(sam_edge_python)
BUNDLE=out/bundles/vit_b-onnxruntime-fp32
if [ -n "$CKPT" ]; then
  [ -f "$CKPT" ] || { echo "demo: checkpoint not found: $CKPT" >&2; exit 1; }
  WEIGHTS=(--checkpoint "$CKPT")
else
  echo "demo: no checkpoint given -> SEEDED RANDOM WEIGHTS (masks are meaningless; pass an official sam_vit_b_01ec64.pth for real masks)" >&2
  WEIGHTS=()
fi
$PY -m sam_edge.cli build --model vit_b "${WEIGHTS[@]}" --backend onnxruntime --precision fp32 --output "$BUNDLE" --overwrite
$PY -m sam_edge.cli predict --bundle "$BUNDLE" skimage:astronaut --point 250,120 --point 100,400,0 --output out/demo/astronaut --repeat 5
$PY -m sam_edge.cli predict --bundle "$BUNDLE" skimage:coffee --box 170,40,480,330 --output out/demo/coffee --repeat 5
echo "demo: overlays in out/demo/astronaut/overlay.png and out/demo/coffee/overlay.png"
