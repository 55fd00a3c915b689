#include "compat.h"

// rms_norm_{W}(x [T,H], w [H] W, out [T,H], T, H, eps)         grid (T), block 256
// add_rms_norm_{W}(x, residual, w, out, residual_out, T, H, eps) grid (T), block 256
//
// out may alias x, residual_out may alias x or residual: every element is
// read and written by the same thread at the same index, so no __restrict__.

template <typename W>
TSR_INLINE void rms_norm_impl(const float* x, const W* w, float* out, int T, int H, float eps) {
    __shared__ float red[32];
    const int t = blockIdx.x;
    if (t >= T) return;  // uniform across the block
    const float* xr = x + (long long)t * H;
    float* orow = out + (long long)t * H;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        const float v = xr[j];
        ss += v * v;
    }
    ss = tsr_block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)H + eps);
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        orow[j] = (xr[j] * inv) * tsr_load_f32(w, j);
    }
}

template <typename W>
TSR_INLINE void add_rms_norm_impl(const float* x, const float* residual, const W* w, float* out,
                                  float* residual_out, int T, int H, float eps) {
    __shared__ float red[32];
    const int t = blockIdx.x;
    if (t >= T) return;  // uniform across the block
    const long long base = (long long)t * H;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        const float v = x[base + j] + residual[base + j];
        residual_out[base + j] = v;
        ss += v * v;
    }
    ss = tsr_block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)H + eps);
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        // Same thread wrote residual_out[base + j] above: no barrier needed.
        out[base + j] = (residual_out[base + j] * inv) * tsr_load_f32(w, j);
    }
}

#define DEF(SUF, W)                                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        rms_norm_##SUF(const float* x, const W* w, float* out, int T, int H, float eps) {     \
        rms_norm_impl<W>(x, w, out, T, H, eps);                                               \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        add_rms_norm_##SUF(const float* x, const float* residual, const W* w, float* out,     \
                           float* residual_out, int T, int H, float eps) {                    \
        add_rms_norm_impl<W>(x, residual, w, out, residual_out, T, H, eps);                   \
    }
TSR_TYPES(DEF)
#undef DEF
