#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches the default model (cached),
# the openai Python client the server tests drive it with and the XLA CPU
# PJRT plugin the tpu backend is tested on, NVIDIA's NVRTC + ptxas wheels
# the cuda kernels are compiled with (all cached) and Debian's HIP, whose
# hipRTC compiles the same kernels for AMD GPUs, and the gaudi backend's
# Level Zero loader, PoCL and SPIR-V tools (all apt) and Intel's OpenCL CPU
# runtime (PyPI wheels), which runs the SPIR-V Level Zero would load,
# then runs every crate's tests. Needs only Rust and python3 with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-default-model.sh >/dev/null
scripts/install-test-deps.sh >/dev/null
scripts/fetch-pjrt-plugin.sh >/dev/null
scripts/fetch-cuda-tools.sh >/dev/null
scripts/fetch-intel-opencl.sh >/dev/null
scripts/install-hip.sh
scripts/install-gaudi-deps.sh
# With HIP, the Level Zero loader, PoCL and the SPIR-V tools installed, their
# tests must find them (not skip).
export TESSERA_EXPECT_HIP=1 TESSERA_EXPECT_LEVEL_ZERO=1 TESSERA_EXPECT_OPENCL=1 TESSERA_EXPECT_SPIRV_TOOLS=1
# The cuda kernels also run on the CPU under an emulation built with g++.
if ! command -v g++ >/dev/null; then
  sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq g++ >/dev/null
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one per binary).
sum() { grep -oE "[0-9]+ $1" "$log" | awk '{s += $1} END {print s + 0}'; }
echo "tests: $(sum passed) passed, $(sum failed) failed, $(sum ignored) skipped"
exit "$status"
