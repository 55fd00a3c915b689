#!/bin/sh
# Builds the unity emulation library as backends/gpu-kernels/src/emulator.rs
# does, then the self test against it, and runs it.
#   kernels/cuda/emulate/build_selftest.sh [OUTDIR]   (default /tmp/tsr-emu)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(dirname "$HERE")
OUT=${1:-/tmp/tsr-emu}
mkdir -p "$OUT"
U="$OUT/kernels_unity.cpp"
: > "$U"
for f in embedding.cu norm.cu rope.cu elementwise.cu kv_write.cu attention.cu select.cu gemv.cu; do
    echo "#include \"$f\"" >> "$U"
done
for k in embedding rms_norm add_rms_norm add_bias gemv kv_write paged_attention_prefill \
         paged_attention_decode; do
    echo "TSR_EMU_TRAMPOLINE(${k}_f32)" >> "$U"
    echo "TSR_EMU_TRAMPOLINE(${k}_bf16)" >> "$U"
done
for k in rope silu_mul add to_bf16 attention_tiles paged_attention_reduce gather_last argmax \
         sample; do
    echo "TSR_EMU_TRAMPOLINE($k)" >> "$U"
done
g++ -std=c++17 -O2 -g0 -fPIC -shared -DTSR_EMULATE -Wall -Wextra -Wno-unknown-pragmas \
    -include "$HERE/emulate.h" -I "$SRC" "$U" "$HERE/runtime.cpp" -o "$OUT/libtsr_cuda_emu.so"
# The self test links its own copy (kernels + runtime + a few broken kernels)
# and also dlopen()s the library above.
g++ -std=c++17 -O2 -g -DTSR_EMULATE -Wall -Wextra -Wno-unknown-pragmas \
    -include "$HERE/emulate.h" -I "$SRC" "$HERE/selftest.cpp" "$U" "$HERE/runtime.cpp" \
    -o "$OUT/selftest" -ldl
"$OUT/selftest" "$OUT/libtsr_cuda_emu.so"
