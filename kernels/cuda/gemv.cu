#include "compat.h"

// gemv_{W}(w [N,K] W, x [T,K] f32, out [T,N] f32, T, N, K)
// grid (ceil(N/4)), block 128, smem 0. Host guarantees T <= 8, K % 8 == 0 and
// 16-byte aligned pointers. out[t,n] = sum_k x[t,k] * w[n,k].
//
// One warp per output row n (4 rows per block; on 64-wide AMD waves each wave
// takes two rows). Each lane streams 16-byte vectors of the weight row
// (8 bf16 or 4 f32), GEMV_UNROLL of them in flight, and applies each to all
// T tokens (x is small and stays in L1/L2).

#define GEMV_ROWS 4
#define GEMV_UNROLL 4
#define GEMV_MAX_T 8

template <typename W>
struct gemv_vec;

template <>
struct gemv_vec<float> {
    static const int ELEMS = 4;
    TSR_INLINE static float dot(uint4 wv, const float* __restrict__ xr, int vi) {
        const float4 a = TSR_LDG(reinterpret_cast<const float4*>(xr) + vi);
        float r = a.x * __uint_as_float(wv.x);
        r += a.y * __uint_as_float(wv.y);
        r += a.z * __uint_as_float(wv.z);
        r += a.w * __uint_as_float(wv.w);
        return r;
    }
};

template <>
struct gemv_vec<tsr_bf16> {
    static const int ELEMS = 8;
    TSR_INLINE static float dot(uint4 wv, const float* __restrict__ xr, int vi) {
        const float4 a = TSR_LDG(reinterpret_cast<const float4*>(xr) + 2 * vi);
        const float4 b = TSR_LDG(reinterpret_cast<const float4*>(xr) + 2 * vi + 1);
        float r = a.x * __uint_as_float(wv.x << 16);
        r += a.y * __uint_as_float(wv.x & 0xffff0000u);
        r += a.z * __uint_as_float(wv.y << 16);
        r += a.w * __uint_as_float(wv.y & 0xffff0000u);
        r += b.x * __uint_as_float(wv.z << 16);
        r += b.y * __uint_as_float(wv.z & 0xffff0000u);
        r += b.z * __uint_as_float(wv.w << 16);
        r += b.w * __uint_as_float(wv.w & 0xffff0000u);
        return r;
    }
};

template <typename W>
TSR_INLINE void gemv_impl(const W* __restrict__ w, const float* __restrict__ x,
                          float* __restrict__ out, int T, int N, int K) {
    const int lane = threadIdx.x % TSR_WARP;
    const int warp = threadIdx.x / TSR_WARP;
    const int nwarps = blockDim.x / TSR_WARP;
    const int nvec = K / gemv_vec<W>::ELEMS;
    for (int r = warp; r < GEMV_ROWS; r += nwarps) {
        const int n = blockIdx.x * GEMV_ROWS + r;
        if (n >= N) break;
        const uint4* wr = reinterpret_cast<const uint4*>(w + (long long)n * K);
        float acc[GEMV_MAX_T];
#pragma unroll
        for (int tt = 0; tt < GEMV_MAX_T; ++tt) acc[tt] = 0.0f;

        int v = lane;
        for (; v + (GEMV_UNROLL - 1) * TSR_WARP < nvec; v += GEMV_UNROLL * TSR_WARP) {
            uint4 wv[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u) wv[u] = TSR_LDG(wr + v + u * TSR_WARP);
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u) {
#pragma unroll
                for (int tt = 0; tt < GEMV_MAX_T; ++tt) {
                    if (tt < T) {
                        acc[tt] += gemv_vec<W>::dot(wv[u], x + (long long)tt * K,
                                                    v + u * TSR_WARP);
                    }
                }
            }
        }
        for (; v < nvec; v += TSR_WARP) {
            const uint4 wv = TSR_LDG(wr + v);
#pragma unroll
            for (int tt = 0; tt < GEMV_MAX_T; ++tt) {
                if (tt < T) acc[tt] += gemv_vec<W>::dot(wv, x + (long long)tt * K, v);
            }
        }
#pragma unroll
        for (int tt = 0; tt < GEMV_MAX_T; ++tt) {
            if (tt < T) {
                const float s = tsr_warp_sum(acc[tt]);
                if (lane == 0) out[(long long)tt * N + n] = s;
            }
        }
    }
}

#define DEF(SUF, W)                                                                     \
    extern "C" __global__ void __launch_bounds__(128)                                   \
        gemv_##SUF(const W* w, const float* x, float* out, int T, int N, int K) {       \
        gemv_impl<W>(w, x, out, T, N, K);                                               \
    }
TSR_TYPES(DEF)
#undef DEF
