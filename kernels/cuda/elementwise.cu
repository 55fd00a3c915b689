#include "compat.h"

// silu_mul / add / to_bf16: grid ceil(count/256), block 256.
// add_bias_{W}: grid ceil(T*N/256), block 256.

extern "C" __global__ void __launch_bounds__(256)
    silu_mul(const float* gate, const float* up, float* out, int count) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
}

extern "C" __global__ void __launch_bounds__(256)
    add(const float* a, const float* b, float* out, int count) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    out[i] = a[i] + b[i];
}

extern "C" __global__ void __launch_bounds__(256)
    to_bf16(const float* __restrict__ x, tsr_bf16* __restrict__ out, int count) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    out[i] = tsr_f32_to_bf16(x[i]);
}

template <typename W>
TSR_INLINE void add_bias_impl(float* __restrict__ out, const W* __restrict__ bias, int T, int N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (N <= 0 || i >= (long long)T * N) return;
    const int j = (int)(i % N);
    out[i] += tsr_load_f32(bias, j);
}

#define DEF(SUF, W)                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                               \
        add_bias_##SUF(float* out, const W* bias, int T, int N) {                   \
        add_bias_impl<W>(out, bias, T, N);                                          \
    }
TSR_TYPES(DEF)
#undef DEF
