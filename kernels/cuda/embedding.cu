#include "compat.h"

// embedding_{W}(table [V,H] W, ids [T], out [T,H] f32, T, H, V)
// grid (T), block 256, smem 0. Out-of-range ids give a zero row.
template <typename W>
TSR_INLINE void embedding_impl(const W* __restrict__ table, const int* __restrict__ ids,
                               float* __restrict__ out, int T, int H, int V) {
    const int t = blockIdx.x;
    if (t >= T) return;
    const int id = ids[t];
    float* o = out + (long long)t * H;
    if (id < 0 || id >= V) {
        for (int j = threadIdx.x; j < H; j += blockDim.x) o[j] = 0.0f;
        return;
    }
    const long long base = (long long)id * H;
    for (int j = threadIdx.x; j < H; j += blockDim.x) o[j] = tsr_load_f32(table, base + j);
}

#define DEF(SUF, W)                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                      \
        embedding_##SUF(const W* table, const int* ids, float* out, int T, int H, int V) { \
        embedding_impl<W>(table, ids, out, T, H, V);                                       \
    }
TSR_TYPES(DEF)
#undef DEF
