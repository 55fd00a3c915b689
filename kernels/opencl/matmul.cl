// matmul_{W}(w [N,K] W, x [T,K] W, out [T,N] f32, T, N, K)
// grid (ceil(N/64), ceil(T/64)), block 256, no dynamic local memory.
// out[t,n] = sum_k x[t,k] * w[n,k], accumulated in f32 (bf16 inputs are
// widened when staged). Any T, N, K (K = 0 gives zeros); pointers need only
// element alignment.
//
// A classic tiled GEMM: a group computes a 64 (t) x 64 (n) tile of out, a
// work-item a 4 x 4 sub-tile, rows t0 + 4*ty + i and columns n0 + 4*tx + j
// (tx, ty in 0..15), as four float4 accumulators. Per K-slice of MM_KT the
// group stages x[t0.., k0..] and w[n0.., k0..] in local memory, k-major as
// float4 rows (so a work-item reads its 4 t and its 4 n as one float4 each),
// zero-padded past T, N and K so the inner loop has no edge tests.
//
// Written for PoCL (a CPU: a group's work-items run one after another, and
// what a work-item keeps across a barrier is stored per work-item): explicit
// float4 math, one base pointer per tile, and the k loop unrolled only by 2:
// a full unroll has LLVM hoist 32 addresses out of the slice loop, which
// PoCL then saves and reloads per work-item (3x slower). (Not with a
// `#pragma unroll 2`: its loop metadata makes llvm-spirv-15 emit invalid
// merge blocks.)
//
// Devices with sub-groups could share the x and w fragments through
// sub-group broadcasts instead of local memory; that variant is not written
// here because the CI device (PoCL) has no sub-groups.

#define MM_TILE 64
#define MM_KT 16
#define MM_BLOCK 256
// float4 per k-row of a tile: 16, plus one to spread the staging stores over
// the local memory banks.
#define MM_LD4 (MM_TILE / 4 + 1)

TSR_INLINE float4 mm_load4_f32(const __global float* p, long i) { return vload4(0, p + i); }
TSR_INLINE float4 mm_load4_bf16(const __global tsr_bf16* p, long i) {
    return as_float4(convert_uint4(vload4(0, p + i)) << 16);
}

// Stage rows r0.. r0+63 (of `rows`), k0.. k0+15 of src [rows, K] into dst,
// transposed (dst[k][row]). Work-item lid loads 4 consecutive k of row
// lid / 4: neighbouring work-items read neighbouring memory.
#define MM_STAGE(SFX, src, rows, r0, dst)                                        \
    {                                                                            \
        const int row = lid >> 2;                                                \
        const int kq = (lid & 3) * 4;                                            \
        const int g = r0 + row;                                                  \
        const int k = k0 + kq;                                                   \
        float4 v = (float4)(0.0f);                                               \
        if (g < rows) {                                                          \
            const long at = (long)g * K + k;                                     \
            if (k + 4 <= K) {                                                    \
                v = mm_load4_##SFX(src, at);                                     \
            } else {                                                             \
                if (k < K) v.x = tsr_load_##SFX(src, at);                        \
                if (k + 1 < K) v.y = tsr_load_##SFX(src, at + 1);                \
                if (k + 2 < K) v.z = tsr_load_##SFX(src, at + 2);                \
            }                                                                    \
        }                                                                        \
        __local float* d = (__local float*)(dst) + kq * (MM_LD4 * 4) + row;      \
        d[0] = v.x;                                                              \
        d[MM_LD4 * 4] = v.y;                                                     \
        d[2 * MM_LD4 * 4] = v.z;                                                 \
        d[3 * MM_LD4 * 4] = v.w;                                                 \
    }

// One k of the slice: the rank-1 update of the 4 x 4 sub-tile.
#define MM_STEP(kk)                                                              \
    {                                                                            \
        const float4 a = xp[(kk) * MM_LD4];                                      \
        const float4 b = wp[(kk) * MM_LD4];                                      \
        acc0 += a.x * b;                                                         \
        acc1 += a.y * b;                                                         \
        acc2 += a.z * b;                                                         \
        acc3 += a.w * b;                                                         \
    }

// One output row of the sub-tile: 4 columns, fewer at the edge of N.
#define MM_STORE(i, acc)                                                         \
    if (t + i < T) {                                                             \
        __global float* o = out + (long)(t + i) * N + n;                         \
        if (n + 4 <= N) {                                                        \
            vstore4(acc, 0, o);                                                  \
        } else {                                                                 \
            if (n < N) o[0] = acc.x;                                             \
            if (n + 1 < N) o[1] = acc.y;                                         \
            if (n + 2 < N) o[2] = acc.z;                                         \
        }                                                                        \
    }

// Shifts and masks instead of / and %: a div/rem pair makes LLVM emit
// `freeze`, which llvm-spirv-15 cannot translate.
#define DEF(SFX, W)                                                                          \
    __kernel void matmul_##SFX(const __global W* restrict w, const __global W* restrict x,  \
                               __global float* restrict out, int T, int N, int K) {          \
        __local float4 xs[MM_KT * MM_LD4];                                                   \
        __local float4 ws[MM_KT * MM_LD4];                                                   \
        const int lid = get_local_id(0);                                                     \
        const int tx = lid & 15;                                                             \
        const int ty = lid >> 4;                                                             \
        const int n0 = get_group_id(0) * MM_TILE;                                            \
        const int t0 = get_group_id(1) * MM_TILE;                                            \
        const __local float4* xp = xs + ty;                                                  \
        const __local float4* wp = ws + tx;                                                  \
        float4 acc0 = (float4)(0.0f), acc1 = (float4)(0.0f);                                 \
        float4 acc2 = (float4)(0.0f), acc3 = (float4)(0.0f);                                 \
        for (int k0 = 0; k0 < K; k0 += MM_KT) {                                              \
            barrier(CLK_LOCAL_MEM_FENCE); /* the previous slice is consumed */               \
            MM_STAGE(SFX, x, T, t0, xs)                                                      \
            MM_STAGE(SFX, w, N, n0, ws)                                                      \
            barrier(CLK_LOCAL_MEM_FENCE);                                                    \
            /* Two k per trip; kn, not MM_KT, so that LLVM does not unroll fully (see */     \
            /* above). An odd kn reads one zero-padded k. */                                 \
            const int kn = min(MM_KT, K - k0);                                               \
            for (int kk = 0; kk < kn; kk += 2) {                                             \
                MM_STEP(kk)                                                                  \
                MM_STEP(kk + 1)                                                              \
            }                                                                                \
        }                                                                                    \
        const int t = t0 + ty * 4;                                                           \
        const int n = n0 + tx * 4;                                                           \
        MM_STORE(0, acc0)                                                                    \
        MM_STORE(1, acc1)                                                                    \
        MM_STORE(2, acc2)                                                                    \
        MM_STORE(3, acc3)                                                                    \
    }
TSR_TYPES(DEF)
#undef DEF
