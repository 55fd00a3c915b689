// silu_mul(gate, up, out, count) / add(a, b, out, count) / to_bf16(x, out bf16, count):
//   grid ceil(count/256), block 256.
// add_bias_{W}(out [T,N] f32, bias [N] W, T, N): grid ceil(T*N/256), block 256.
// Port of kernels/cuda/elementwise.cu. out may alias an input in silu_mul / add.

// The CUDA index blockIdx.x * blockDim.x + threadIdx.x, in 64 bits.
TSR_INLINE long ew_index(void) {
    return (long)get_group_id(0) * (long)get_local_size(0) + (long)get_local_id(0);
}

__kernel void silu_mul(const __global float* gate, const __global float* up,
                       __global float* out, int count) {
    const long i = ew_index();
    if (i >= count) return;
    const float g = gate[i];
    out[i] = g / (1.0f + exp(-g)) * up[i];
}

__kernel void add(const __global float* a, const __global float* b, __global float* out,
                  int count) {
    const long i = ew_index();
    if (i >= count) return;
    out[i] = a[i] + b[i];
}

__kernel void to_bf16(const __global float* restrict x, __global tsr_bf16* restrict out,
                      int count) {
    const long i = ew_index();
    if (i >= count) return;
    out[i] = tsr_f32_to_bf16(x[i]);
}

#define DEF(SFX, W)                                                                  \
    __kernel void add_bias_##SFX(__global float* restrict out,                       \
                                 const __global W* restrict bias, int T, int N) {    \
        const long i = ew_index();                                                   \
        if (N <= 0 || i >= (long)T * N) return;                                      \
        const int j = (int)(i % N);                                                  \
        out[i] += tsr_load_##SFX(bias, j);                                           \
    }
TSR_TYPES(DEF)
#undef DEF
