#!/usr/bin/env bash
# Fetches Intel's OpenCL runtime for CPUs (PyPI: intel-opencl-rt 2026.2.0 with
# its tbb and intel-cmplr-lib-rt dependencies), checks the wheels' sha256 and
# caches the libraries it needs in one folder (they find each other through
# their $ORIGIN run path). Idempotent. Prints the folder holding intel.icd:
# the value for OCL_ICD_VENDORS, which makes the ICD loader list only it.
#
# Why: Intel's SPIR-V consumer and sub-groups, on any x86-64 CPU. The gaudi
# backend's tests run the very SPIR-V module Level Zero loads on it
# (clCreateProgramWithIL), which PoCL cannot load.
set -euo pipefail

VERSION=2026.2.0
declare -A WHEELS=(
  ["intel-opencl-rt==2026.2.0"]=6b6215a420598b4999ee01caca6d5cbe106aa4155c46c52377619c5aafce9f67
  ["intel-cmplr-lib-rt==2026.2.0"]=9f713083073a820d2496a6da8e8d4f3482aba6640f74521d25ea48dcebe72748
  ["tbb==2023.2.0"]=7d80615b6e970f11671fa05b6eaa9483ac864fbfe525ac280271a78b37870b7c
)
CACHE="${TESSERA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera}"
DIR="$CACHE/intel-opencl/$VERSION"
DONE="$DIR/complete"

if [[ -f "$DONE" ]]; then
  echo "$DIR/icd"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "fetching Intel's OpenCL CPU runtime $VERSION from PyPI (270 MB)..." >&2
for spec in "${!WHEELS[@]}"; do
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$TMP" "$spec" >&2
done
for spec in "${!WHEELS[@]}"; do
  name="${spec%%==*}"
  wheel="$(ls "$TMP/${name//-/_}-"*.whl | head -n1)"
  if [[ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "${WHEELS[$spec]}" ]]; then
    echo "error: $wheel has the wrong sha256" >&2
    exit 1
  fi
done
rm -rf "$DIR"
mkdir -p "$DIR/lib" "$DIR/icd"
# Only what the runtime loads: its own folder (without the ICD loader it
# also ships and the unversioned copies of its two largest libraries), the
# compiler runtime's math and support libraries, and TBB.
python3 - "$TMP" "$DIR/lib" <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1:]
want = {
    "intel_opencl_rt": lambda n: not n.startswith("libOpenCL.so") and n not in (
        "libcommon_clang.so", "libintelocl.so.2026.22.10.0", "libintelocl.so-gdb.py"),
    "intel_cmplr_lib_rt": lambda n: n in ("libimf.so", "libsvml.so", "libirng.so", "libintlc.so.5"),
    "tbb": lambda n: n in ("libtbb.so.12", "libtbbmalloc.so.2"),
}
for prefix, keep in want.items():
    (wheel,) = glob.glob(os.path.join(tmp, prefix + "-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            # <name>-<version>.data/data/lib/<file>
            if len(parts) == 4 and parts[1:3] == ["data", "lib"] and parts[3] and keep(parts[3]):
                with z.open(info) as src, open(os.path.join(out, parts[3]), "wb") as dst:
                    dst.write(src.read())
PY
for lib in libintelocl.so libcommon_clang.so.2026.22.10.0 libsvml.so libtbb.so.12; do
  [[ -f "$DIR/lib/$lib" ]] || { echo "error: $lib is not in the wheels" >&2; exit 1; }
done
echo "$DIR/lib/libintelocl.so" > "$DIR/icd/intel-cpu.icd"
touch "$DONE"
echo "$DIR/icd"
