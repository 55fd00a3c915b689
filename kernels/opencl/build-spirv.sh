#!/usr/bin/env bash
# Builds the OpenCL C kernels of this directory into one SPIR-V module (for
# Level Zero): the same concatenation the OpenCL host compiles (common.cl,
# then every kernel file in the host's order, see backends/gaudi/src/sources.rs),
# compiled as OpenCL C 1.2 for spir64 with sub-groups, translated and
# validated.
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

# Sub-groups (matmul.cl's *_sg kernels): cl_intel_subgroups (sub-group
# built-ins; spir64 has it by default, enabled here so that does not matter)
# and cl_intel_required_subgroup_size, the intel_reqd_sub_group_size
# attribute, which clang-15 supports on every target but has no extension
# macro for. (cl_khr_subgroups is OpenCL C 2.0+ in clang-15.) The module
# then needs SPIR-V's SubgroupDispatch and Groups capabilities, which every
# Intel GPU driver has; an OpenCL device without them builds from source.
"$CLANG" -c -target spir64 -cl-std=CL1.2 -O2 -emit-llvm -Xclang -finclude-default-header \
    -Xclang -cl-ext=+cl_intel_subgroups -Dcl_intel_required_subgroup_size=1 \
    "$tmp/all.cl" -o "$tmp/all.bc"
"$LLVM_SPIRV" "$tmp/all.bc" -o "$out"
"$SPIRV_VAL" "$out"
