// rms_norm_{W}(x [T,H], w [H] W, out [T,H], T, H, eps)         grid (T), block 256
// add_rms_norm_{W}(x, residual, w, out, residual_out, T, H, eps) grid (T), block 256
//
// Port of kernels/cuda/norm.cu. out may alias x, residual_out may alias x or
// residual: every element is read and written by the same work-item at the
// same index, so no restrict.
//
// The reduction has barriers, so a group past T (none with the host's grid)
// does not return early: it runs with an empty row (h = 0) and writes nothing.

#define NORM_BLOCK 256

#define DEF(SFX, W)                                                                       \
    __kernel void rms_norm_##SFX(const __global float* x, const __global W* w,            \
                                 __global float* out, int T, int H, float eps) {          \
        __local float red[NORM_BLOCK];                                                    \
        const int t = get_group_id(0);                                                    \
        const int h = t < T ? H : 0;                                                      \
        const int j0 = get_local_id(0);                                                   \
        const int js = get_local_size(0);                                                 \
        const __global float* xr = x + (long)t * H;                                       \
        __global float* orow = out + (long)t * H;                                         \
        float ss = 0.0f;                                                                  \
        for (int j = j0; j < h; j += js) {                                                \
            const float v = xr[j];                                                        \
            ss += v * v;                                                                  \
        }                                                                                 \
        ss = tsr_group_sum(ss, red);                                                      \
        const float inv = 1.0f / sqrt(ss / (float)H + eps);                               \
        for (int j = j0; j < h; j += js) {                                                \
            orow[j] = (xr[j] * inv) * tsr_load_##SFX(w, j);                               \
        }                                                                                 \
    }                                                                                     \
    __kernel void add_rms_norm_##SFX(const __global float* x, const __global float* residual, \
                                     const __global W* w, __global float* out,            \
                                     __global float* residual_out, int T, int H,          \
                                     float eps) {                                         \
        __local float red[NORM_BLOCK];                                                    \
        const int t = get_group_id(0);                                                    \
        const int h = t < T ? H : 0;                                                      \
        const int j0 = get_local_id(0);                                                   \
        const int js = get_local_size(0);                                                 \
        const long base = (long)t * H;                                                    \
        float ss = 0.0f;                                                                  \
        for (int j = j0; j < h; j += js) {                                                \
            const float v = x[base + j] + residual[base + j];                             \
            residual_out[base + j] = v;                                                   \
            ss += v * v;                                                                  \
        }                                                                                 \
        ss = tsr_group_sum(ss, red);                                                      \
        const float inv = 1.0f / sqrt(ss / (float)H + eps);                               \
        for (int j = j0; j < h; j += js) {                                                \
            /* Same work-item wrote residual_out[base + j] above: no barrier needed. */   \
            out[base + j] = (residual_out[base + j] * inv) * tsr_load_##SFX(w, j);        \
        }                                                                                 \
    }
TSR_TYPES(DEF)
#undef DEF
