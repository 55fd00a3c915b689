#include "compat.h"

// rope(x [T,n_heads,head_dim], positions [T], inv_freq [head_dim/2], out, T,
//      n_heads, head_dim, pos_scale, interleaved)
// grid (T), block 128, smem 0. out does not alias x.
//
// Each thread owns one frequency index i (computes cos/sin once) and walks a
// strided subset of the heads.
extern "C" __global__ void __launch_bounds__(128)
    rope(const float* __restrict__ x, const int* __restrict__ positions,
         const float* __restrict__ inv_freq, float* __restrict__ out, int T, int n_heads,
         int head_dim, float pos_scale, int interleaved) {
    const int t = blockIdx.x;
    if (t >= T) return;
    const int half = head_dim >> 1;
    if (half <= 0) return;
    const int tid = threadIdx.x;
    const int nt = blockDim.x;
    const bool fits = nt >= half;
    const int hstep = fits ? nt / half : 1;   // heads processed in parallel
    const int h0 = fits ? tid / half : 0;
    const int i0 = fits ? tid % half : tid;
    const int istep = fits ? half : nt;
    if (h0 >= hstep) return;  // no barriers in this kernel

    const float p = (float)positions[t] * pos_scale;
    const long long row = (long long)t * n_heads;
    for (int i = i0; i < half; i += istep) {
        const float a = p * inv_freq[i];
        const float c = cosf(a);
        const float s = sinf(a);
        const int j0 = interleaved ? 2 * i : i;
        const int j1 = interleaved ? 2 * i + 1 : i + half;
        for (int h = h0; h < n_heads; h += hstep) {
            const long long base = (row + h) * head_dim;
            const float x0 = x[base + j0];
            const float x1 = x[base + j1];
            out[base + j0] = x0 * c - x1 * s;
            out[base + j1] = x1 * c + x0 * s;
        }
    }
}
