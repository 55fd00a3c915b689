// kv_write_{KV}(cache [num_blocks,nkv,bs,d] KV, new_kv [T,nkv,d] f32, slots [T],
//               T, nkv, bs, d, num_blocks)
// grid (T, nkv), block 128. Slots < 0 or >= num_blocks*bs are skipped.
// Port of kernels/cuda/kv_write.cu; no barriers.

#define DEF(SFX, KV)                                                                       \
    __kernel void kv_write_##SFX(__global KV* restrict cache,                              \
                                 const __global float* restrict new_kv,                    \
                                 const __global int* restrict slots, int T, int nkv,       \
                                 int bs, int d, int num_blocks) {                          \
        const int t = get_group_id(0);                                                     \
        const int h = get_group_id(1);                                                     \
        if (t >= T || h >= nkv || bs <= 0) return;                                         \
        const int slot = slots[t];                                                         \
        if (slot < 0 || (long)slot >= (long)num_blocks * bs) return;                       \
        const int blk = slot / bs;                                                         \
        const int off = slot - blk * bs;                                                   \
        const long dst = (((long)blk * nkv + h) * bs + off) * d;                           \
        const long src = ((long)t * nkv + h) * d;                                          \
        for (int i = get_local_id(0); i < d; i += get_local_size(0)) {                     \
            tsr_store_##SFX(cache, dst + i, new_kv[src + i]);                              \
        }                                                                                  \
    }
TSR_TYPES(DEF)
#undef DEF
