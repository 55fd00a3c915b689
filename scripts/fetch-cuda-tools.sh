#!/usr/bin/env bash
# Installs NVIDIA's NVRTC and ptxas from their PyPI wheels into tessera's
# cache, once: the cuda backend's tests compile every kernel with them on
# machines with no GPU and no CUDA toolkit. Prints the directory
# (NVRTC in nvidia/cuda_nvrtc/lib, ptxas in nvidia/cuda_nvcc/bin).
set -euo pipefail

VERSION=12.9.86
CACHE="${TESSERA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera}"
DIR="$CACHE/cuda-tools/$VERSION"

if [[ ! -f "$DIR/.complete" ]]; then
  rm -rf "$DIR"
  echo "installing NVRTC and ptxas $VERSION into $DIR..." >&2
  # One pip command: a second one into the same --target would delete the first's files.
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --no-deps --no-warn-conflicts --target "$DIR" \
    "nvidia-cuda-nvrtc-cu12==$VERSION" "nvidia-cuda-nvcc-cu12==$VERSION" >&2
  for f in nvidia/cuda_nvrtc/lib/libnvrtc.so.12 nvidia/cuda_nvcc/bin/ptxas; do
    [[ -e "$DIR/$f" ]] || { echo "the wheels did not provide $f" >&2; exit 1; }
  done
  touch "$DIR/.complete"
fi
echo "$DIR"
