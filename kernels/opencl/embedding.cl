// embedding_{W}(table [V,H] W, ids [T], out [T,H] f32, T, H, V)
// grid (T), block 256. Out-of-range ids give a zero row.
// Port of kernels/cuda/embedding.cu; no barriers, so early returns are fine.

#define DEF(SFX, W)                                                                    \
    __kernel void embedding_##SFX(const __global W* table, const __global int* ids,    \
                                  __global float* out, int T, int H, int V) {          \
        const int t = get_group_id(0);                                                 \
        if (t >= T) return;                                                            \
        const int id = ids[t];                                                         \
        __global float* o = out + (long)t * H;                                         \
        if (id < 0 || id >= V) {                                                       \
            for (int j = get_local_id(0); j < H; j += get_local_size(0)) o[j] = 0.0f;  \
            return;                                                                    \
        }                                                                              \
        const long base = (long)id * H;                                                \
        for (int j = get_local_id(0); j < H; j += get_local_size(0)) {                 \
            o[j] = tsr_load_##SFX(table, base + j);                                    \
        }                                                                              \
    }
TSR_TYPES(DEF)
#undef DEF
