#!/usr/bin/env bash
# Installs the Python packages the tests drive tessera with (the official
# `openai` client) into tessera's cache, once: later runs reuse it. Prints the
# directory to put on PYTHONPATH.
set -euo pipefail

OPENAI_VERSION=3.57.0
CACHE="${TESSERA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera}"
DIR="$CACHE/python/openai-$OPENAI_VERSION"

if [[ ! -f "$DIR/.complete" ]]; then
  rm -rf "$DIR"
  echo "installing openai==$OPENAI_VERSION into $DIR..." >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-warn-conflicts --target "$DIR" "openai==$OPENAI_VERSION" >&2
  touch "$DIR/.complete"
fi
echo "$DIR"
