#!/usr/bin/env bash
# Installs Debian's oneAPI Level Zero loader (libze1, loader 1.8; small, once:
# apt skips what is installed). level-zero-sys's test opens it and expects
# the clean "no Level Zero driver" answer of a machine without Intel
# hardware; the build needs none of it (the loader is opened at run time).
# Needs root or sudo; prints nothing on success.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libze_loader.so.1'; then
  exit 0
fi
sudo=""
[[ $(id -u) == 0 ]] || sudo="sudo"
echo "installing Debian's Level Zero loader (libze1)..." >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libze1 >&2
ldconfig -p | grep -q 'libze_loader.so.1' || {
  echo "libze_loader.so.1 is still not found after installing libze1" >&2
  exit 1
}
