#!/usr/bin/env bash
# The whole test suite, on a fresh machine: fetches the default model (cached),
# then runs every crate's tests. Needs only Rust and python3 with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-default-model.sh >/dev/null
cargo test --workspace --locked
