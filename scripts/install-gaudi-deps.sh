#!/usr/bin/env bash
# Installs what the gaudi backend's tests use, from Debian (once: nothing is
# done when every package is present):
#   libze1                   the oneAPI Level Zero loader; level-zero-sys and
#                            the probe expect its clean "no driver" answer;
#   libze-dev                ze_api.h, against which the fake loader of
#                            backends/gaudi/tests/level_zero_mock.rs is built;
#   pocl-opencl-icd          PoCL, OpenCL on the CPU, on which the backend's
#   ocl-icd-libopencl1       kernels and host code run end to end;
#   clang-15 llvm-spirv-15   build the kernels to SPIR-V (the form Level Zero
#   spirv-tools              loads) and validate it (spirv-val).
# The build needs none of it: both runtimes are opened at run time.
# Needs root or sudo; prints nothing on success.
set -euo pipefail
packages=(libze1 libze-dev pocl-opencl-icd ocl-icd-libopencl1 clang-15 llvm-spirv-15 spirv-tools)
if dpkg-query -W -f='${Status}\n' "${packages[@]}" 2>/dev/null | grep -qv 'install ok installed'; then
  missing=1
elif [[ $(dpkg-query -W -f='${Status}\n' "${packages[@]}" 2>/dev/null | wc -l) != "${#packages[@]}" ]]; then
  missing=1
else
  missing=0
fi
[[ $missing == 1 ]] || exit 0
sudo=""
[[ $(id -u) == 0 ]] || sudo="sudo"
echo "installing the gaudi backend's test tools (${packages[*]})..." >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >&2
ldconfig -p | grep -q 'libze_loader.so.1' || {
  echo "libze_loader.so.1 is still not found after installing libze1" >&2
  exit 1
}
ldconfig -p | grep -q 'libOpenCL.so.1' || {
  echo "libOpenCL.so.1 is still not found after installing ocl-icd-libopencl1" >&2
  exit 1
}
