#!/usr/bin/env bash
# Fetches the XLA CPU PJRT plugin (PyPI package xla-cpu-pjrt==0.0.1: the same
# PJRT C API a TPU's libtpu.so serves, running on the CPU), checks its sha256
# and caches the unpacked plugin. Idempotent. Prints the path of the .so, the
# value for TESSERA_PJRT_PLUGIN.
set -euo pipefail

WHEEL_SHA=55837b6b7b47daa717f2d9a5a03563ea0ceaa338d06a81a1e2d3f060d960decc
SO_SHA=88c3f28c5900f48ad4a82cab9e79bba9537809743395e341485f8794268820dc
CACHE="${TESSERA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera}"
DIR="$CACHE/pjrt/xla-cpu-pjrt-0.0.1"
SO="$DIR/xla_cpu_pjrt.so"

sum_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$SO" && "$(sum_of "$SO")" == "$SO_SHA" ]]; then
  echo "$SO"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "fetching xla-cpu-pjrt==0.0.1 from PyPI (63 MB)..." >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$TMP" "xla-cpu-pjrt==0.0.1" >&2
WHEEL="$(ls "$TMP"/xla_cpu_pjrt-0.0.1-*.whl | head -n1)"
if [[ "$(sum_of "$WHEEL")" != "$WHEEL_SHA" ]]; then
  echo "error: $WHEEL has the wrong sha256" >&2
  exit 1
fi
python3 - "$WHEEL" "$TMP/unpacked" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in ("xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so", "xla_plugins/xla_cpu_pjrt/include/pjrt_c_api.h"):
        z.extract(name, out)
PY
mkdir -p "$DIR"
mv "$TMP/unpacked/xla_plugins/xla_cpu_pjrt/include/pjrt_c_api.h" "$DIR/pjrt_c_api.h"
mv "$TMP/unpacked/xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so" "$SO.partial"
if [[ "$(sum_of "$SO.partial")" != "$SO_SHA" ]]; then
  echo "error: the unpacked plugin has the wrong sha256" >&2
  exit 1
fi
mv "$SO.partial" "$SO"
echo "$SO"
