#!/bin/sh
# Builds sam_edge_example: C++17, no onnxruntime headers or link (the program
# dlopens the runtime and uses sam-edge's own ABI declarations in csrc/ort/).
#   examples/cpp/build.sh [OUTPUT]     (default: examples/cpp/build/sam_edge_example)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/build/sam_edge_example"}
mkdir -p "$(dirname "$out")"
"${CXX:-g++}" -std=c++17 -O2 -Wall -Wextra -I"$here/../../csrc/ort" "$here/sam_edge_example.cpp" -ldl -o "$out"
echo "$out"
