// tessera CUDA/HIP compat header.
//
// Every kernel source (*.cu in this directory) includes this header and
// nothing else. The host compiles each source separately with NVRTC (or
// hipRTC) and passes this file as the in-memory header "compat.h".
//
// Rules for kernel code:
//   * only the CUDA/HIP common subset: __global__, __shared__,
//     extern __shared__ float smem[], __syncthreads();
//   * warp shuffles only through TSR_SHFL_XOR / the tsr_warp_* helpers;
//   * never hard-code the warp width: use TSR_WARP;
//   * bf16 is carried as unsigned short (tsr_bf16); all math is f32 with the
//     precise libm functions (expf, tanhf, sinf, cosf), no fast intrinsics.
#pragma once

// The dynamic shared array's qualifiers (kernels declare
// `TSR_EXTERN_SHARED __attribute__((aligned(16))) float smem[];`). The CPU
// emulator (kernels/cuda/emulate, -DTSR_EMULATE) defines it as plain extern.
#ifndef TSR_EXTERN_SHARED
#define TSR_EXTERN_SHARED extern __shared__
#endif

#if defined(__HIP_PLATFORM_AMD__) || defined(__HIPCC_RTC__) || defined(__HIP__)
#define TSR_HIP 1
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define TSR_WARP __AMDGCN_WAVEFRONT_SIZE
#else
#define TSR_WARP 64
#endif
#define TSR_SHFL_XOR(v, m) __shfl_xor((v), (m))
#define TSR_LDG(p) (*(p))
#else
#if defined(TSR_EMU_WARP)  // the CPU emulator, as NVIDIA (32) or AMD gfx9 (64)
#define TSR_WARP ((int)TSR_EMU_WARP)
#else
#define TSR_WARP 32
#endif
#define TSR_SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#define TSR_LDG(p) __ldg(p)
#endif

#define TSR_INLINE __device__ __forceinline__

typedef unsigned short tsr_bf16;

#define TSR_INF (__uint_as_float(0x7f800000u))
#define TSR_NEG_INF (__uint_as_float(0xff800000u))

// ---------------------------------------------------------------- bf16 <-> f32

TSR_INLINE float tsr_bf16_to_f32(tsr_bf16 x) {
    return __uint_as_float(((unsigned)x) << 16);
}

// Round to nearest even; NaN stays a (quiet) NaN with its sign.
TSR_INLINE tsr_bf16 tsr_f32_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (tsr_bf16)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (tsr_bf16)(u >> 16);
}

// ------------------------------------------------- typed loads / stores (W, KV)

TSR_INLINE float tsr_load_f32(const float* p, long long i) { return p[i]; }
TSR_INLINE float tsr_load_f32(const tsr_bf16* p, long long i) { return tsr_bf16_to_f32(p[i]); }

TSR_INLINE void tsr_store_f32(float* p, long long i, float v) { p[i] = v; }
TSR_INLINE void tsr_store_f32(tsr_bf16* p, long long i, float v) { p[i] = tsr_f32_to_bf16(v); }

// Two consecutive elements p[i], p[i+1]; i must be even (aligned pair).
TSR_INLINE float2 tsr_load2_f32(const float* p, long long i) {
    return *reinterpret_cast<const float2*>(p + i);
}
TSR_INLINE float2 tsr_load2_f32(const tsr_bf16* p, long long i) {
    unsigned u = *reinterpret_cast<const unsigned*>(p + i);
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

// ------------------------------------------------------------- reductions

TSR_INLINE float tsr_warp_sum(float v) {
#pragma unroll
    for (int o = TSR_WARP / 2; o > 0; o >>= 1) v += TSR_SHFL_XOR(v, o);
    return v;
}

TSR_INLINE float tsr_warp_max(float v) {
#pragma unroll
    for (int o = TSR_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, TSR_SHFL_XOR(v, o));
    return v;
}

// Block-wide sum; every thread gets the result. `sh` is a __shared__ float
// array of at least blockDim.x / TSR_WARP entries. Contains barriers: every
// thread of the block must call it.
TSR_INLINE float tsr_block_sum(float v, float* sh) {
    v = tsr_warp_sum(v);
    const int lane = threadIdx.x % TSR_WARP;
    const int warp = threadIdx.x / TSR_WARP;
    const int nw = (blockDim.x + TSR_WARP - 1) / TSR_WARP;
    __syncthreads();  // sh may still be read from a previous call
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = 0.0f;
    for (int i = 0; i < nw; ++i) r += sh[i];
    return r;
}

// Each typed kernel is a template `__device__` body instantiated by a
// per-file macro as `<name>_f32` (float) and `<name>_bf16` (tsr_bf16).
#define TSR_TYPES(DEF) DEF(f32, float) DEF(bf16, tsr_bf16)
