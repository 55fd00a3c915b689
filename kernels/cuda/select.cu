#include "compat.h"

// gather_last(x [T,H], qsl [S+1], out [S,H], S, H)      grid (S), block 256
// argmax(logits [S,V], out [S], S, V)                  grid (S), block 512
// sample(logits [S,V], temperature [S], noise [S,V], out [S], S, V)
//                                                      grid (S), block 512

extern "C" __global__ void __launch_bounds__(256)
    gather_last(const float* __restrict__ x, const int* __restrict__ qsl, float* __restrict__ out,
                int S, int H) {
    const int s = blockIdx.x;
    if (s >= S) return;
    const int a = qsl[s];
    const int b = qsl[s + 1];
    float* o = out + (long long)s * H;
    if (b > a) {
        const float* src = x + (long long)(b - 1) * H;
        for (int j = threadIdx.x; j < H; j += blockDim.x) o[j] = src[j];
    } else {
        for (int j = threadIdx.x; j < H; j += blockDim.x) o[j] = 0.0f;
    }
}

#define TSR_NO_INDEX 0x7fffffff

// Candidate (v, i) replaces (bv, bi) if it is strictly larger, or equal with
// a lower index. Only values > -inf are ever accepted (NaN never compares),
// so an untouched (-inf, TSR_NO_INDEX) means "nothing beats -inf".
TSR_INLINE void tsr_argmax_take(float v, int i, float& bv, int& bi) {
    if (v > bv || (v == bv && i < bi && v > TSR_NEG_INF)) {
        bv = v;
        bi = i;
    }
}

// Block reduce of (bv, bi); returns the winning index to every thread.
TSR_INLINE int tsr_argmax_block(float bv, int bi) {
    __shared__ float sv[64];
    __shared__ int si[64];
#pragma unroll
    for (int o = TSR_WARP / 2; o > 0; o >>= 1) {
        const float ov = TSR_SHFL_XOR(bv, o);
        const int oi = TSR_SHFL_XOR(bi, o);
        tsr_argmax_take(ov, oi, bv, bi);
    }
    const int lane = threadIdx.x % TSR_WARP;
    const int warp = threadIdx.x / TSR_WARP;
    const int nw = (blockDim.x + TSR_WARP - 1) / TSR_WARP;
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    float rv = TSR_NEG_INF;
    int ri = TSR_NO_INDEX;
    for (int w = 0; w < nw; ++w) tsr_argmax_take(sv[w], si[w], rv, ri);
    return ri == TSR_NO_INDEX ? 0 : ri;
}

extern "C" __global__ void __launch_bounds__(512)
    argmax(const float* __restrict__ logits, int* __restrict__ out, int S, int V) {
    const int s = blockIdx.x;
    if (s >= S) return;
    const float* row = logits + (long long)s * V;
    float bv = TSR_NEG_INF;
    int bi = TSR_NO_INDEX;
    for (int i = threadIdx.x; i < V; i += blockDim.x) tsr_argmax_take(row[i], i, bv, bi);
    const int r = tsr_argmax_block(bv, bi);
    if (threadIdx.x == 0) out[s] = r;
}

extern "C" __global__ void __launch_bounds__(512)
    sample(const float* __restrict__ logits, const float* __restrict__ temperature,
           const float* __restrict__ noise, int* __restrict__ out, int S, int V) {
    const int s = blockIdx.x;
    if (s >= S) return;
    const long long base = (long long)s * V;
    const float* row = logits + base;
    const float* nz = noise + base;
    const float t = temperature[s];
    float bv = TSR_NEG_INF;
    int bi = TSR_NO_INDEX;
    if (t <= 0.0f) {
        for (int i = threadIdx.x; i < V; i += blockDim.x) tsr_argmax_take(row[i], i, bv, bi);
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            const float v = row[i] / t + nz[i];
            tsr_argmax_take(v, i, bv, bi);
        }
    }
    const int r = tsr_argmax_block(bv, bi);
    if (threadIdx.x == 0) out[s] = r;
}
