#include "compat.h"

// kv_write_{KV}(cache [num_blocks,nkv,bs,d] KV, new_kv [T,nkv,d] f32, slots [T],
//               T, nkv, bs, d, num_blocks)
// grid (T, nkv), block 128. Slots < 0 or >= num_blocks*bs are skipped.
template <typename KV>
TSR_INLINE void kv_write_impl(KV* __restrict__ cache, const float* __restrict__ new_kv,
                              const int* __restrict__ slots, int T, int nkv, int bs, int d,
                              int num_blocks) {
    const int t = blockIdx.x;
    const int h = blockIdx.y;
    if (t >= T || h >= nkv || bs <= 0) return;
    const int slot = slots[t];
    if (slot < 0 || (long long)slot >= (long long)num_blocks * bs) return;
    const int blk = slot / bs;
    const int off = slot - blk * bs;
    const long long dst = (((long long)blk * nkv + h) * bs + off) * d;
    const long long src = ((long long)t * nkv + h) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        tsr_store_f32(cache, dst + i, new_kv[src + i]);
    }
}

#define DEF(SUF, KV)                                                                       \
    extern "C" __global__ void __launch_bounds__(128)                                      \
        kv_write_##SUF(KV* cache, const float* new_kv, const int* slots, int T, int nkv,   \
                       int bs, int d, int num_blocks) {                                    \
        kv_write_impl<KV>(cache, new_kv, slots, T, nkv, bs, d, num_blocks);                \
    }
TSR_TYPES(DEF)
#undef DEF
