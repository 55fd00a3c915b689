// LoRA's two halves with one adapter slot per token (idx[t]; negative or
// >= L: no adapter). Stacks hold L slots; the scaling is folded into b.
//
// lora_shrink_{W}(x [T,K] f32, a [L,R,K] W, idx [T], out [T,R] f32, T, R, K, L)
//   grid (T), block 128: out[t,r] = a[idx[t], r, :] . x[t, :], zeros without a slot.
// lora_expand_{W}(y [T,N] f32, u [T,R] f32, b [L,N,R] W, idx [T], out [T,N] f32, T, N, R, L)
//   grid (T, ceil(N/128)), block 128: out[t,n] = y[t,n] + b[idx[t], n, :] . u[t, :],
//   y[t,n] without a slot. One work-item per output; u's row is read by all.
//
// Port of kernels/cuda/lora.cu. Without warps, shrink gives each rank row
// r = 0..R-1 (in turn, R is small) to the whole group: work-items stride K,
// then a group sum. y and out may alias (same index, same work-item).

#define LORA_BLOCK 128

#define DEF(SFX, W)                                                                           \
    __kernel void lora_shrink_##SFX(const __global float* restrict x,                         \
                                    const __global W* restrict a,                             \
                                    const __global int* restrict idx,                         \
                                    __global float* restrict out, int T, int R, int K,        \
                                    int L) {                                                  \
        __local float red[LORA_BLOCK];                                                        \
        const int t = get_group_id(0);                                                        \
        const int s = t < T ? idx[t] : -1;                                                    \
        const bool has = s >= 0 && s < L;                                                     \
        __global float* o = out + (long)t * R;                                                \
        if (t < T && !has) {                                                                  \
            for (int r = get_local_id(0); r < R; r += get_local_size(0)) o[r] = 0.0f;         \
        }                                                                                     \
        /* Uniform over the group: every work-item reaches every group sum. */                \
        const int rows = has ? R : 0;                                                         \
        const __global float* xr = x + (long)t * K;                                           \
        for (int r = 0; r < rows; ++r) {                                                      \
            const long row = ((long)s * R + r) * K;                                           \
            float acc = 0.0f;                                                                 \
            for (int k = get_local_id(0); k < K; k += get_local_size(0)) {                    \
                acc += tsr_load_##SFX(a, row + k) * xr[k];                                    \
            }                                                                                 \
            acc = tsr_group_sum(acc, red);                                                    \
            if (get_local_id(0) == 0) o[r] = acc;                                             \
        }                                                                                     \
    }                                                                                         \
    __kernel void lora_expand_##SFX(const __global float* y,                                  \
                                    const __global float* restrict u,                         \
                                    const __global W* restrict b,                             \
                                    const __global int* restrict idx,                         \
                                    __global float* out, int T, int N, int R,                 \
                                    int L) {                                                  \
        const int t = get_group_id(0);                                                        \
        const int n = get_group_id(1) * get_local_size(0) + get_local_id(0);                  \
        if (t >= T || n >= N) return; /* no barriers in this kernel */                        \
        const long at = (long)t * N + n;                                                      \
        const int s = idx[t];                                                                 \
        float v = y[at];                                                                      \
        if (s >= 0 && s < L) {                                                                \
            const __global float* ur = u + (long)t * R;                                       \
            const long row = ((long)s * N + n) * R;                                           \
            float acc = 0.0f;                                                                 \
            for (int r = 0; r < R; ++r) acc += tsr_load_##SFX(b, row + r) * ur[r];            \
            v += acc;                                                                         \
        }                                                                                     \
        out[at] = v;                                                                          \
    }
TSR_TYPES(DEF)
#undef DEF
