#include "compat.h"

// LoRA's two halves with one adapter slot per token (idx[t]; negative or
// >= L: no adapter). Stacks hold L slots; the scaling is folded into b.
//
// lora_shrink_{W}(x [T,K] f32, a [L,R,K] W, idx [T], out [T,R] f32, T, R, K, L)
//   grid (T), block 128: out[t,r] = a[idx[t], r, :] . x[t, :], zeros without a slot.
//   One warp per rank row: lanes stride K, then a warp sum.
// lora_expand_{W}(y [T,N] f32, u [T,R] f32, b [L,N,R] W, idx [T], out [T,N] f32, T, N, R, L)
//   grid (T, ceil(N/128)), block 128: out[t,n] = y[t,n] + b[idx[t], n, :] . u[t, :],
//   y[t,n] without a slot. One thread per output; u's row is read by all.

template <typename W>
TSR_INLINE void lora_shrink_impl(const float* __restrict__ x, const W* __restrict__ a,
                                 const int* __restrict__ idx, float* __restrict__ out, int T,
                                 int R, int K, int L) {
    const int t = blockIdx.x;
    if (t >= T) return;  // uniform across the block
    const int s = idx[t];
    const int lane = threadIdx.x % TSR_WARP;
    const int warp = threadIdx.x / TSR_WARP;
    const int nwarps = blockDim.x / TSR_WARP;
    float* o = out + (long long)t * R;
    if (s < 0 || s >= L) {
        for (int r = threadIdx.x; r < R; r += blockDim.x) o[r] = 0.0f;
        return;
    }
    const float* xr = x + (long long)t * K;
    for (int r = warp; r < R; r += nwarps) {
        const long long row = ((long long)s * R + r) * K;
        float acc = 0.0f;
        for (int k = lane; k < K; k += TSR_WARP) acc += tsr_load_f32(a, row + k) * xr[k];
        acc = tsr_warp_sum(acc);
        if (lane == 0) o[r] = acc;
    }
}

template <typename W>
TSR_INLINE void lora_expand_impl(const float* __restrict__ y, const float* __restrict__ u,
                                 const W* __restrict__ b, const int* __restrict__ idx,
                                 float* __restrict__ out, int T, int N, int R, int L) {
    const int t = blockIdx.x;
    const int n = blockIdx.y * blockDim.x + threadIdx.x;
    if (t >= T || n >= N) return;  // no barriers in this kernel
    const long long at = (long long)t * N + n;
    const int s = idx[t];
    float v = y[at];
    if (s >= 0 && s < L) {
        const float* ur = u + (long long)t * R;
        const long long row = ((long long)s * N + n) * R;
        float acc = 0.0f;
        for (int r = 0; r < R; ++r) acc += tsr_load_f32(b, row + r) * ur[r];
        v += acc;
    }
    out[at] = v;
}

#define DEF(SUF, W)                                                                          \
    extern "C" __global__ void __launch_bounds__(128)                                        \
        lora_shrink_##SUF(const float* x, const W* a, const int* idx, float* out, int T,     \
                          int R, int K, int L) {                                             \
        lora_shrink_impl<W>(x, a, idx, out, T, R, K, L);                                     \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                        \
        lora_expand_##SUF(const float* y, const float* u, const W* b, const int* idx,        \
                          float* out, int T, int N, int R, int L) {                          \
        lora_expand_impl<W>(y, u, b, idx, out, T, N, R, L);                                  \
    }
TSR_TYPES(DEF)
#undef DEF
