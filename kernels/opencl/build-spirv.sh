#!/usr/bin/env bash
# Builds the OpenCL C kernels of this directory into one SPIR-V module (for
# Level Zero): the same concatenation the OpenCL host compiles (common.cl,
# then every kernel file in the host's order, see backends/gaudi/src/sources.rs),
# compiled as OpenCL C 1.2 for spir64, translated and validated.
#
# Usage: kernels/opencl/build-spirv.sh OUT.spv     (from any directory)
# Tools may be overridden with CLANG, LLVM_SPIRV, SPIRV_VAL.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUT.spv" >&2
    exit 2
fi
out="$1"

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLANG="${CLANG:-clang-15}"
LLVM_SPIRV="${LLVM_SPIRV:-llvm-spirv-15}"
SPIRV_VAL="${SPIRV_VAL:-spirv-val}"

# Must match the host's source order.
files=(common embedding norm rope elementwise kv_write attention select gemv lora matmul)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

for f in "${files[@]}"; do
    cat "$dir/$f.cl"
    echo  # a file without a final newline must not run into the next
done >"$tmp/all.cl"

"$CLANG" -c -target spir64 -cl-std=CL1.2 -O2 -emit-llvm -Xclang -finclude-default-header \
    "$tmp/all.cl" -o "$tmp/all.bc"
"$LLVM_SPIRV" "$tmp/all.bc" -o "$out"
"$SPIRV_VAL" "$out"
