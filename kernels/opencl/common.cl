// tessera OpenCL C common definitions (OpenCL C 1.2; extensions only in the
// sub-group GEMM of matmul.cl, compiled where the device has sub-groups).
//
// The host builds ONE program from this file followed by every kernel file
// of this directory (the order is `SOURCES` in backends/gaudi/src/sources.rs),
// so kernel files use these definitions without #include. The same
// concatenation is compiled to SPIR-V for Level Zero (build-spirv.sh).
//
// These kernels are ports of kernels/cuda/*.cu with the same names, the same
// parameters in the same order and the same launch shapes, so that one host
// (tessera_gpu_kernels::kernels::GpuKernels) drives both. A CUDA launch of
// grid (gx, gy, gz) and block b is the NDRange global (gx*b, gy, gz), local
// (b, 1, 1): blockIdx.x = get_group_id(0), threadIdx.x = get_local_id(0),
// blockDim.x = get_local_size(0), gridDim.x = get_num_groups(0).
//
// Rules for kernel code:
//   * pointers to device memory are `__global`; static shared arrays are
//     `__local` arrays declared at kernel scope (OpenCL C allows no other),
//     handed to helpers as `__local` pointers;
//   * a kernel that takes dynamic shared memory in CUDA (`extern __shared__`)
//     takes it here as one more, last, parameter `__local float* smem`; the
//     host sets it to the launch's shared-memory size;
//   * no sub-groups outside matmul.cl's `_sg` kernels (PoCL has none, and
//     every kernel must run there): reductions go through local memory with
//     the tsr_group_* helpers, which contain barriers (call them from every
//     work-item of the group);
//   * bf16 is carried as ushort (tsr_bf16); all math is f32 with the precise
//     built-ins (exp, tanh, sin, cos), never native_* or half_*.

typedef ushort tsr_bf16;

#define TSR_INLINE static inline
#define TSR_INF (as_float(0x7f800000u))
#define TSR_NEG_INF (as_float(0xff800000u))

// ---------------------------------------------------------------- bf16 <-> f32

TSR_INLINE float tsr_bf16_to_f32(tsr_bf16 x) { return as_float(((uint)x) << 16); }

// Round to nearest even; NaN stays a (quiet) NaN with its sign.
TSR_INLINE tsr_bf16 tsr_f32_to_bf16(float f) {
    uint u = as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (tsr_bf16)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (tsr_bf16)(u >> 16);
}

// ------------------------------------------- typed loads / stores (W, KV)
// One function per element type, named by the kernels' type suffix, so that
// a typed kernel written as a macro of SFX calls tsr_load_##SFX.

TSR_INLINE float tsr_load_f32(const __global float* p, long i) { return p[i]; }
TSR_INLINE float tsr_load_bf16(const __global tsr_bf16* p, long i) {
    return tsr_bf16_to_f32(p[i]);
}

TSR_INLINE void tsr_store_f32(__global float* p, long i, float v) { p[i] = v; }
TSR_INLINE void tsr_store_bf16(__global tsr_bf16* p, long i, float v) {
    p[i] = tsr_f32_to_bf16(v);
}

// Two consecutive elements p[i], p[i+1] (no alignment assumed).
TSR_INLINE float2 tsr_load2_f32(const __global float* p, long i) { return vload2(0, p + i); }
TSR_INLINE float2 tsr_load2_bf16(const __global tsr_bf16* p, long i) {
    const ushort2 v = vload2(0, p + i);
    return (float2)(tsr_bf16_to_f32(v.x), tsr_bf16_to_f32(v.y));
}

// ------------------------------------------------------------- reductions
// Work-group wide sum / max of one value per work-item; every work-item gets
// the result. `sh` is a __local float array of at least get_local_size(0)
// entries, which must be a power of two. Contains barriers.

TSR_INLINE float tsr_group_sum(float v, __local float* sh) {
    const int i = get_local_id(0);
    const int n = get_local_size(0);
    barrier(CLK_LOCAL_MEM_FENCE);  // sh may still be read by a previous call
    sh[i] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int o = n / 2; o > 0; o >>= 1) {
        if (i < o) sh[i] += sh[i + o];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return sh[0];
}

TSR_INLINE float tsr_group_max(float v, __local float* sh) {
    const int i = get_local_id(0);
    const int n = get_local_size(0);
    barrier(CLK_LOCAL_MEM_FENCE);
    sh[i] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int o = n / 2; o > 0; o >>= 1) {
        if (i < o) sh[i] = fmax(sh[i], sh[i + o]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return sh[0];
}

// Each typed kernel is a macro of (SFX, T) instantiated by a per-file macro
// as `<name>_f32` (float) and `<name>_bf16` (tsr_bf16).
#define TSR_TYPES(DEF) DEF(f32, float) DEF(bf16, tsr_bf16)
