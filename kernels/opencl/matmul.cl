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
// Devices with sub-groups get matmul_{W}_sg (below) instead, which shares
// the x fragments through sub-group broadcasts rather than local memory.

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

// ---------------------------------------------------------- sub-group GEMM
// matmul_{W}_sg(w [N,K] W, x [T,K] W, out [T,N] f32, T, N, K): the ABI and
// result of matmul_{W} (any T, N, K; element-aligned pointers), for devices
// with sub-groups of 16 (Intel GPUs; Intel's OpenCL CPU runtime):
// grid (ceil(N/32), ceil(T/32)), block 64 (four sub-groups of 16), no local
// memory. Compiled only where the compiler defines the sub-group extension
// and cl_intel_required_subgroup_size (build-spirv.sh enables both for the
// SPIR-V; Intel's compilers define them from source; PoCL has neither), so
// the host launches these kernels only where they exist (Api::has_kernel)
// and the tiled kernel elsewhere.
//
// A sub-group computes an 8 (t) x 32 (n) tile of out, held in registers:
// lane l owns columns n0 + l and n0 + 16 + l of the tile's 8 rows (16
// accumulators), and the group's four sub-groups stack along t (32 x 32 per
// group). Per k-chunk of 16, each lane loads one k of each of the 8 x rows
// (lane l: x[t, k0 + l], one coalesced load per row) and its own two w rows'
// 16 k (two float8 per row); step kk broadcasts x[t, k0 + kk] of each row
// from lane kk (sub_group_broadcast with a constant lane: a register operand
// on Intel GPUs, no memory) into 16 FMAs. Rows past T and columns past N
// load the last row / column (so the loop has no tests) and are not stored;
// the last, partial, k-chunk loads zeros past K.
//
// The loops over the chunk's 16 k and the 8 rows are written out by macros
// (constant broadcast lanes; no `#pragma unroll`, see above); k0 is declared
// before its loop (an llvm-spirv-15 trap, see attention.cl).

#if (defined(cl_khr_subgroups) || defined(cl_intel_subgroups)) && \
    defined(cl_intel_required_subgroup_size)

#define MMS_SG 16      // sub-group size (required)
#define MMS_ROWS 8     // t rows per sub-group
#define MMS_COLS 32    // n columns per sub-group (and per group): 2 per lane
#define MMS_GROUP_T 32 // t rows per group: 4 sub-groups
#define MMS_BLOCK 64   // work-items per group

TSR_INLINE float8 mms_load8_f32(const __global float* p, int k) { return vload8(0, p + k); }
TSR_INLINE float8 mms_load8_bf16(const __global tsr_bf16* p, int k) {
    return as_float8(convert_uint8(vload8(0, p + k)) << 16);
}

// Eight w elements p[k..k+7], zero from K on (the last chunk).
#define MMS_LOAD8_TAIL(SFX)                                                                  \
    TSR_INLINE float8 mms_load8_tail_##SFX(const __global W_##SFX* p, int k, int K) {        \
        float8 v = (float8)(0.0f);                                                           \
        if (k < K) v.s0 = tsr_load_##SFX(p, k);                                              \
        if (k + 1 < K) v.s1 = tsr_load_##SFX(p, k + 1);                                      \
        if (k + 2 < K) v.s2 = tsr_load_##SFX(p, k + 2);                                      \
        if (k + 3 < K) v.s3 = tsr_load_##SFX(p, k + 3);                                      \
        if (k + 4 < K) v.s4 = tsr_load_##SFX(p, k + 4);                                      \
        if (k + 5 < K) v.s5 = tsr_load_##SFX(p, k + 5);                                      \
        if (k + 6 < K) v.s6 = tsr_load_##SFX(p, k + 6);                                      \
        if (k + 7 < K) v.s7 = tsr_load_##SFX(p, k + 7);                                      \
        return v;                                                                            \
    }
#define W_f32 float
#define W_bf16 tsr_bf16
MMS_LOAD8_TAIL(f32)
MMS_LOAD8_TAIL(bf16)
#undef MMS_LOAD8_TAIL
#undef W_f32
#undef W_bf16

// Step kk of the chunk for row i: x[t0 + i, k0 + kk] from lane kk, times this
// lane's two w values.
#define MMS_FMA(i, kk, wa, wb)                                                   \
    {                                                                            \
        const float xb = sub_group_broadcast(xv##i, (uint)(kk));                 \
        acc_a##i += xb * (wa);                                                   \
        acc_b##i += xb * (wb);                                                   \
    }
#define MMS_K(kk, wa, wb)                                                        \
    MMS_FMA(0, kk, wa, wb) MMS_FMA(1, kk, wa, wb) MMS_FMA(2, kk, wa, wb)         \
    MMS_FMA(3, kk, wa, wb) MMS_FMA(4, kk, wa, wb) MMS_FMA(5, kk, wa, wb)         \
    MMS_FMA(6, kk, wa, wb) MMS_FMA(7, kk, wa, wb)
// Eight k (h .. h+7) from this lane's w values va, vb of those k.
#define MMS_K8(h, va, vb)                                                        \
    MMS_K(h + 0, va.s0, vb.s0) MMS_K(h + 1, va.s1, vb.s1)                        \
    MMS_K(h + 2, va.s2, vb.s2) MMS_K(h + 3, va.s3, vb.s3)                        \
    MMS_K(h + 4, va.s4, vb.s4) MMS_K(h + 5, va.s5, vb.s5)                        \
    MMS_K(h + 6, va.s6, vb.s6) MMS_K(h + 7, va.s7, vb.s7)

// One k-chunk: XLOAD(i) gives this lane's x value of row i, WLOAD(p, k)
// eight w values of row p from k.
#define MMS_CHUNK(XLOAD, WLOAD)                                                  \
    {                                                                            \
        const float xv0 = XLOAD(0), xv1 = XLOAD(1), xv2 = XLOAD(2);              \
        const float xv3 = XLOAD(3), xv4 = XLOAD(4), xv5 = XLOAD(5);              \
        const float xv6 = XLOAD(6), xv7 = XLOAD(7);                              \
        float8 va = WLOAD(wa, k0), vb = WLOAD(wb, k0);                           \
        MMS_K8(0, va, vb)                                                        \
        va = WLOAD(wa, k0 + 8);                                                  \
        vb = WLOAD(wb, k0 + 8);                                                  \
        MMS_K8(8, va, vb)                                                        \
    }

// Row i of the tile, if in T: this lane's two columns, those in N.
#define MMS_STORE(i)                                                             \
    if (i <= tl) {                                                               \
        __global float* o = out + (long)(t0 + i) * N;                            \
        if (ca < N) o[ca] = acc_a##i;                                            \
        if (cb < N) o[cb] = acc_b##i;                                            \
    }

#define DEF(SFX, W)                                                                          \
    __attribute__((intel_reqd_sub_group_size(MMS_SG))) __kernel void matmul_##SFX##_sg(      \
        const __global W* restrict w, const __global W* restrict x,                          \
        __global float* restrict out, int T, int N, int K) {                                 \
        const int lane = get_sub_group_local_id();                                           \
        const int t0 = get_group_id(1) * MMS_GROUP_T + get_sub_group_id() * MMS_ROWS;        \
        const int n0 = get_group_id(0) * MMS_COLS;                                           \
        if (t0 >= T || n0 >= N) return; /* the whole sub-group */                            \
        /* The last row of the tile in T, and each row's x offset (rows past */              \
        /* T read row T-1). */                                                               \
        const int tl = min(MMS_ROWS - 1, T - 1 - t0);                                        \
        const __global W* xr = x + (long)t0 * K + lane;                                      \
        const long xo0 = 0, xo1 = (long)min(1, tl) * K, xo2 = (long)min(2, tl) * K;          \
        const long xo3 = (long)min(3, tl) * K, xo4 = (long)min(4, tl) * K;                   \
        const long xo5 = (long)min(5, tl) * K, xo6 = (long)min(6, tl) * K;                   \
        const long xo7 = (long)min(7, tl) * K;                                               \
        /* This lane's columns, and their w rows (past N: row N-1). */                       \
        const int ca = n0 + lane;                                                            \
        const int cb = n0 + MMS_SG + lane;                                                   \
        const __global W* wa = w + (long)min(ca, N - 1) * K;                                 \
        const __global W* wb = w + (long)min(cb, N - 1) * K;                                 \
        float acc_a0 = 0.0f, acc_a1 = 0.0f, acc_a2 = 0.0f, acc_a3 = 0.0f;                    \
        float acc_a4 = 0.0f, acc_a5 = 0.0f, acc_a6 = 0.0f, acc_a7 = 0.0f;                    \
        float acc_b0 = 0.0f, acc_b1 = 0.0f, acc_b2 = 0.0f, acc_b3 = 0.0f;                    \
        float acc_b4 = 0.0f, acc_b5 = 0.0f, acc_b6 = 0.0f, acc_b7 = 0.0f;                    \
        int k0 = 0;                                                                          \
        for (; k0 + MMS_SG <= K; k0 += MMS_SG) {                                             \
            MMS_CHUNK(MMS_XLOAD_##SFX, mms_load8_##SFX)                                      \
        }                                                                                    \
        if (k0 < K) {                                                                        \
            const bool in = k0 + lane < K;                                                   \
            MMS_CHUNK(MMS_XLOAD_TAIL_##SFX, MMS_WLOAD_TAIL_##SFX)                            \
        }                                                                                    \
        MMS_STORE(0)                                                                         \
        MMS_STORE(1)                                                                         \
        MMS_STORE(2)                                                                         \
        MMS_STORE(3)                                                                         \
        MMS_STORE(4)                                                                         \
        MMS_STORE(5)                                                                         \
        MMS_STORE(6)                                                                         \
        MMS_STORE(7)                                                                         \
    }
#define MMS_XLOAD_f32(i) tsr_load_f32(xr, xo##i + k0)
#define MMS_XLOAD_bf16(i) tsr_load_bf16(xr, xo##i + k0)
#define MMS_XLOAD_TAIL_f32(i) (in ? tsr_load_f32(xr, xo##i + k0) : 0.0f)
#define MMS_XLOAD_TAIL_bf16(i) (in ? tsr_load_bf16(xr, xo##i + k0) : 0.0f)
#define MMS_WLOAD_TAIL_f32(p, k) mms_load8_tail_f32(p, k, K)
#define MMS_WLOAD_TAIL_bf16(p, k) mms_load8_tail_bf16(p, k, K)
TSR_TYPES(DEF)
#undef DEF

#endif  // sub-groups
