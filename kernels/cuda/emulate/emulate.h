// tessera CUDA kernel emulator: the CUDA builtins our kernels use, for g++
// (C++17) on the CPU. See runtime.cpp for how it is built and what it models.
//
// Included before compat.h (g++ -include emulate.h -DTSR_EMULATE). Every CUDA
// thread is a fiber (ucontext) of one OS thread; the blocks of a launch run
// one after another, so:
//   * __shared__ is `static` (one object shared by the fibers of the running
//     block; it keeps its value from the previous block: not poisoned -- a
//     common named section to find them cannot hold both the statics of
//     inline/template functions (COMDAT) and those of plain functions);
//   * extern __shared__ smem[] is one 256 KiB array defined by runtime.cpp,
//     its first dynamic_smem_bytes poisoned before every block;
//   * threadIdx/blockIdx/blockDim/gridDim read the current fiber's context;
//   * __syncthreads and __shfl_xor_sync switch fibers (runtime.cpp).
#pragma once

#include <math.h>
#include <stddef.h>
#include <string.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

// The kernels reinterpret bf16/float storage as unsigned/float2/uint4 like
// CUDA code does; g++ must not reorder such accesses (-fno-strict-aliasing for
// every function that follows, kernels and runtime alike).
#pragma GCC optimize("no-strict-aliasing")

#ifndef TSR_EMULATE
#define TSR_EMULATE 1
#endif

// Lanes per warp: 32 like NVIDIA; -DTSR_EMU_WARP=64 models AMD's gfx9
// wavefronts, so the kernels' 64-lane paths run on the CPU too (compat.h
// takes TSR_WARP from it).
#ifndef TSR_EMU_WARP
#define TSR_EMU_WARP 32u
#endif

// ------------------------------------------------------------ qualifiers

// Kernels are extern "C"; hidden so that names like `add` or `sample` never
// interpose with (or get interposed by) symbols of the host process. Only
// tsr_emu_launch and the tsr_emu_entry_* trampolines are exported.
#define __global__ __attribute__((visibility("hidden")))
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static
// __restrict__ is a g++ keyword already.

// What compat.h / attention.cu put before the dynamic shared array:
//   TSR_EXTERN_SHARED __attribute__((aligned(16))) float smem[];
#define TSR_EXTERN_SHARED extern

#define TSR_EMU_EXPORT extern "C" __attribute__((visibility("default")))

// ------------------------------------------------------------ vector types

struct tsr_emu_dim3 {
    unsigned x, y, z;
};
typedef tsr_emu_dim3 dim3;
typedef tsr_emu_dim3 uint3;

// may_alias: kernels load these from float / bf16 storage.
struct __attribute__((aligned(8), may_alias)) float2 {
    float x, y;
};
struct __attribute__((aligned(16), may_alias)) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(16), may_alias)) uint4 {
    unsigned x, y, z, w;
};
struct __attribute__((aligned(8), may_alias)) uint2 {
    unsigned x, y;
};
struct __attribute__((aligned(16), may_alias)) int4 {
    int x, y, z, w;
};
struct __attribute__((aligned(8), may_alias)) int2 {
    int x, y;
};
static_assert(sizeof(float2) == 8 && alignof(float2) == 8, "float2");
static_assert(sizeof(float4) == 16 && alignof(float4) == 16, "float4");
static_assert(sizeof(uint4) == 16 && alignof(uint4) == 16, "uint4");

static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) {
    return float4{x, y, z, w};
}
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
    return uint4{x, y, z, w};
}

// ------------------------------------------------------------ bit casts, min/max

static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}

// CUDA's integer min/max overloads (math_functions.hpp), incl. the mixed
// signed/unsigned ones (which compare as unsigned, as in CUDA).
#define TSR_EMU_MINMAX(R, A, B)                                      \
    static inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; } \
    static inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
TSR_EMU_MINMAX(int, int, int)
TSR_EMU_MINMAX(unsigned, unsigned, unsigned)
TSR_EMU_MINMAX(unsigned, int, unsigned)
TSR_EMU_MINMAX(unsigned, unsigned, int)
TSR_EMU_MINMAX(long, long, long)
TSR_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
TSR_EMU_MINMAX(long long, long long, long long)
TSR_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
TSR_EMU_MINMAX(unsigned long long, long long, unsigned long long)
TSR_EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef TSR_EMU_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

// expf, sinf, cosf, tanhf, sqrtf, fmaxf, fminf: glibc's, from <math.h> (global
// namespace). They are not bit-identical to CUDA's (both are within ~1-2 ulp).

template <typename T>
static inline T __ldg(const T* p) {
    return *p;
}

// ------------------------------------------------------------ fiber context

struct tsr_emu_ctx_t {
    uint3 tid;   // threadIdx
    uint3 bid;   // blockIdx
    dim3 bdim;   // blockDim
    dim3 gdim;   // gridDim
};

// The running fiber's context (set by the scheduler at every switch).
extern "C" __attribute__((visibility("hidden"))) tsr_emu_ctx_t* tsr_emu_cur;
static inline tsr_emu_ctx_t* tsr_emu_ctx() { return tsr_emu_cur; }

#define threadIdx (tsr_emu_ctx()->tid)
#define blockIdx (tsr_emu_ctx()->bid)
#define blockDim (tsr_emu_ctx()->bdim)
#define gridDim (tsr_emu_ctx()->gdim)
#define warpSize ((int)TSR_EMU_WARP)

// ------------------------------------------------------------ runtime API

extern "C" {
// Launches `trampoline` (a tsr_emu_entry_*) on grid (gx, gy, gz) x block
// threads; args[i] points at the i-th kernel argument (cuLaunchKernel's
// kernelParams). Returns 0, or non-zero with a message in err[0..errlen).
__attribute__((visibility("default"))) int tsr_emu_launch(
    void (*trampoline)(void** args), unsigned gx, unsigned gy, unsigned gz, unsigned block,
    unsigned dynamic_smem_bytes, void** args, char* err, unsigned long errlen);

// Barrier of the current block (fiber switch).
__attribute__((visibility("hidden"))) void tsr_emu_syncthreads(void);
// Warp exchange: returns lane (lane ^ lane_mask)'s `bits`.
__attribute__((visibility("hidden"))) unsigned tsr_emu_shfl_xor(unsigned mask, unsigned bits,
                                                                int lane_mask, int width);
// Name of the kernel being launched, for error messages (set by trampolines).
extern __attribute__((visibility("hidden"))) const char* tsr_emu_kernel_name;
}

// Opaque calls (another translation unit) plus a compiler memory barrier:
// shared and global memory written by other fibers is reloaded after them.
static inline void __syncthreads() {
    tsr_emu_syncthreads();
    __asm__ __volatile__("" ::: "memory");
}

static inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int width = (int)TSR_EMU_WARP) {
    const unsigned r = tsr_emu_shfl_xor(mask, __float_as_uint(v), lane_mask, width);
    __asm__ __volatile__("" ::: "memory");
    return __uint_as_float(r);
}
static inline int __shfl_xor_sync(unsigned mask, int v, int lane_mask, int width = (int)TSR_EMU_WARP) {
    const unsigned r = tsr_emu_shfl_xor(mask, (unsigned)v, lane_mask, width);
    __asm__ __volatile__("" ::: "memory");
    return (int)r;
}
static inline unsigned __shfl_xor_sync(unsigned mask, unsigned v, int lane_mask,
                                       int width = (int)TSR_EMU_WARP) {
    const unsigned r = tsr_emu_shfl_xor(mask, v, lane_mask, width);
    __asm__ __volatile__("" ::: "memory");
    return r;
}

// ------------------------------------------------------------ trampolines

template <typename... A, size_t... I>
static inline void tsr_emu_invoke_impl(void (*f)(A...), void** args,
                                       std::index_sequence<I...>) {
    (void)args;
    f(*reinterpret_cast<typename std::remove_reference<A>::type*>(args[I])...);
}

// Calls f with its arguments read from args (args[i] -> the i-th value).
template <typename... A>
static inline void tsr_emu_invoke(void (*f)(A...), void** args) {
    tsr_emu_invoke_impl(f, args, std::index_sequence_for<A...>{});
}

// One exported entry point per kernel, in the translation unit that defines
// the kernel (a unity build that #includes every .cu file):
//   extern "C" void tsr_emu_entry_<name>(void** args)
#define TSR_EMU_TRAMPOLINE(name)                       \
    TSR_EMU_EXPORT void tsr_emu_entry_##name(void** args) { \
        tsr_emu_kernel_name = #name;                   \
        tsr_emu_invoke(&name, args);                   \
    }
