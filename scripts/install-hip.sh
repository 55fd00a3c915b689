#!/usr/bin/env bash
# Installs Debian's HIP runtime and compiler (libamdhip64-dev, hipcc; HIP
# 5.2, about 110 MB, once: apt skips what is installed). The rocm backend's
# tests compile every kernel with its hipRTC for gfx90a, gfx940 and gfx1030
# and run its probe; the build itself needs none of it (HIP is loaded at run
# time). Needs root or sudo; prints nothing on success.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libamdhip64.so'; then
  exit 0
fi
sudo=""
[[ $(id -u) == 0 ]] || sudo="sudo"
echo "installing Debian's HIP (libamdhip64-dev hipcc)..." >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libamdhip64-dev hipcc >&2
ldconfig -p | grep -q 'libamdhip64.so' || {
  echo "libamdhip64.so is still not found after installing libamdhip64-dev" >&2
  exit 1
}
