// gemv_{W}(w [N,K] W, x [T,K] f32, out [T,N] f32, T, N, K)
// grid (ceil(N/4)), block 128. out[t,n] = sum_k x[t,k] * w[n,k] for the
// first min(T, 8) tokens (the host sends T <= 8 and K % 8 == 0).
//
// Port of kernels/cuda/gemv.cu: 4 output rows per group, 32 work-items
// ("lanes") per row, each lane applying its part of the weight row to all
// tokens, then a sum over the lanes. Differences, for PoCL (a CPU, which runs
// a group's work-items one after another):
//   * work-item lid takes row lid % 4 and lane lid / 4, and a lane's part of
//     the row is one contiguous chunk of K/32 (not every 32nd vector): the
//     4 work-items of a lane, consecutive in PoCL's loop, read the same chunk
//     of x while it is in L1, and each streams its weights sequentially.
//     2-4x faster on PoCL than the CUDA mapping; on a GPU the chunks' lines
//     are used whole through the cache, though loads are not coalesced;
//   * no warp sum: partial sums go through local memory, then one work-item
//     per (row, token) adds its row's 32 lanes;
//   * tokens go in fixed groups of 4, 2 and 1 (T = 7 is 4 + 2 + 1), so every
//     loop body has a fixed set of float8 accumulators: no private arrays or
//     per-token branches (slow on PoCL, and llvm-spirv-15 mis-orders the
//     blocks of such code); the weight chunk is re-read from cache per group;
//   * no alignment assumed (vload8 needs only element alignment), and any K
//     (a scalar tail for K % 8).

#define GEMV_ROWS 4
#define GEMV_BLOCK 128
#define GEMV_LANES (GEMV_BLOCK / GEMV_ROWS)
#define GEMV_MAX_T 8

TSR_INLINE float8 gemv_load8_f32(const __global float* p, long i) { return vload8(0, p + i); }
TSR_INLINE float8 gemv_load8_bf16(const __global tsr_bf16* p, long i) {
    return as_float8(convert_uint8(vload8(0, p + i)) << 16);
}

TSR_INLINE float gemv_hsum(float8 v) {
    const float4 a = v.lo + v.hi;
    return (a.x + a.y) + (a.z + a.w);
}

// One group of tokens tt + g (g over EACH: 1, 2 or 4 of them): this lane's
// partial sums into red[(tt + g) * GEMV_BLOCK + slot].
#define GEMV_ACC_DECL(g) float8 acc##g = (float8)(0.0f), acc2##g = (float8)(0.0f);
#define GEMV_ACC_FMA(g) acc##g += wv * vload8(v, x + (long)(tt + g) * K);
#define GEMV_ACC_FMA2(g)                                         \
    acc##g += wa * vload8(v, x + (long)(tt + g) * K);           \
    acc2##g += wb * vload8(v + 1, x + (long)(tt + g) * K);
#define GEMV_ACC_TAIL(g) acc##g.s0 += wk * x[(long)(tt + g) * K + k];
#define GEMV_ACC_OUT(g) red[(tt + g) * GEMV_BLOCK + slot] = gemv_hsum(acc##g + acc2##g);

#define GEMV_GROUP(SFX, EACH)                                                \
    {                                                                        \
        EACH(GEMV_ACC_DECL)                                                  \
        int v = v0;                                                          \
        /* Two vectors a step: two FMA chains in flight per accumulator. */  \
        for (; v + 1 < v1; v += 2) {                                         \
            const float8 wa = gemv_load8_##SFX(wr, (long)v * 8);             \
            const float8 wb = gemv_load8_##SFX(wr, (long)v * 8 + 8);         \
            EACH(GEMV_ACC_FMA2)                                              \
        }                                                                    \
        if (v < v1) {                                                        \
            const float8 wv = gemv_load8_##SFX(wr, (long)v * 8);             \
            EACH(GEMV_ACC_FMA)                                               \
        }                                                                    \
        for (int k = nvec * 8 + lane; k < nk; k += GEMV_LANES) {             \
            const float wk = tsr_load_##SFX(wr, k);                          \
            EACH(GEMV_ACC_TAIL)                                              \
        }                                                                    \
        EACH(GEMV_ACC_OUT)                                                   \
    }
#define GEMV_EACH1(F) F(0)
#define GEMV_EACH2(F) F(0) F(1)
#define GEMV_EACH4(F) F(0) F(1) F(2) F(3)

#ifndef TSR_CPU
// Shifts and masks instead of / and %: a div/rem pair makes LLVM emit
// `freeze`, which llvm-spirv-15 cannot translate.
#define DEF(SFX, W)                                                                          \
    __kernel void gemv_##SFX(const __global W* restrict w, const __global float* restrict x,  \
                             __global float* restrict out, int T, int N, int K) {             \
        __local float red[GEMV_MAX_T * GEMV_BLOCK];                                          \
        const int lid = get_local_id(0);                                                     \
        const int r = lid & (GEMV_ROWS - 1);                                                 \
        const int lane = lid >> 2; /* lid / GEMV_ROWS */                                     \
        const int slot = r * GEMV_LANES + lane;                                              \
        const int n = get_group_id(0) * GEMV_ROWS + r;                                       \
        const int nt = min(T, GEMV_MAX_T);                                                   \
        const int nk = n < N ? K : 0; /* no early return: the barrier below */              \
        const int nvec = nk / 8;                                                             \
        const int per = (nvec + GEMV_LANES - 1) / GEMV_LANES;                                \
        const int v0 = min(nvec, lane * per);                                                \
        const int v1 = min(nvec, v0 + per);                                                  \
        const __global W* wr = w + (long)n * K;                                              \
        int tt = 0;                                                                          \
        /* Written out, not a loop over groups: PoCL runs such a loop slower. */             \
        if (tt + 4 <= nt) {                                                                  \
            GEMV_GROUP(SFX, GEMV_EACH4)                                                      \
            tt += 4;                                                                         \
        }                                                                                    \
        if (tt + 4 <= nt) {                                                                  \
            GEMV_GROUP(SFX, GEMV_EACH4)                                                      \
            tt += 4;                                                                         \
        }                                                                                    \
        if (tt + 2 <= nt) {                                                                  \
            GEMV_GROUP(SFX, GEMV_EACH2)                                                      \
            tt += 2;                                                                         \
        }                                                                                    \
        if (tt < nt) GEMV_GROUP(SFX, GEMV_EACH1)                                             \
        barrier(CLK_LOCAL_MEM_FENCE);                                                        \
        /* Work-item lid < 4 * nt sums row r's lanes for token lid / 4 (= lane). */          \
        if (lid < GEMV_ROWS * nt) {                                                          \
            const __local float* p = red + lane * GEMV_BLOCK + r * GEMV_LANES;               \
            float s = 0.0f;                                                                  \
            /* Unrolled: llvm-spirv-15 mis-orders this loop's blocks otherwise. */           \
            _Pragma("unroll")                                                                \
            for (int l = 0; l < GEMV_LANES; ++l) s += p[l];                                  \
            if (n < N) out[(long)lane * N + n] = s;                                          \
        }                                                                                    \
    }
TSR_TYPES(DEF)
#undef DEF
#else

// On a CPU (TSR_CPU: the OpenCL runtime builds with it for CPU devices and
// launches grid ceil(N/16), block 16): one whole row per work-item, no
// local memory, no barrier. PoCL runs a group's work-items as a loop, so a
// row streams sequentially with nothing to save across barriers; the
// GPU mapping above spends most of its time on per-work-item bookkeeping
// there (3x slower decode).
#define GEMV_CPU_GROUP(SFX, EACH)                                            \
    {                                                                        \
        EACH(GEMV_ACC_DECL)                                                  \
        int v = 0;                                                           \
        for (; v + 1 < nvec; v += 2) {                                       \
            const float8 wa = gemv_load8_##SFX(wr, (long)v * 8);             \
            const float8 wb = gemv_load8_##SFX(wr, (long)v * 8 + 8);         \
            EACH(GEMV_ACC_FMA2)                                              \
        }                                                                    \
        if (v < nvec) {                                                      \
            const float8 wv = gemv_load8_##SFX(wr, (long)v * 8);             \
            EACH(GEMV_ACC_FMA)                                               \
        }                                                                    \
        for (int k = nvec * 8; k < K; ++k) {                                 \
            const float wk = tsr_load_##SFX(wr, k);                          \
            EACH(GEMV_ACC_TAIL)                                              \
        }                                                                    \
        EACH(GEMV_CPU_OUT)                                                   \
    }
#define GEMV_CPU_OUT(g) out[(long)(tt + g) * N + n] = gemv_hsum(acc##g + acc2##g);

#define DEF(SFX, W)                                                                          \
    __kernel void gemv_##SFX(const __global W* restrict w, const __global float* restrict x,  \
                             __global float* restrict out, int T, int N, int K) {             \
        const int n = get_global_id(0);                                                      \
        if (n >= N) return;                                                                  \
        const int nt = min(T, GEMV_MAX_T);                                                   \
        const int nvec = K >> 3;                                                             \
        const __global W* wr = w + (long)n * K;                                              \
        int tt = 0;                                                                          \
        if (tt + 4 <= nt) {                                                                  \
            GEMV_CPU_GROUP(SFX, GEMV_EACH4)                                                  \
            tt += 4;                                                                         \
        }                                                                                    \
        if (tt + 4 <= nt) {                                                                  \
            GEMV_CPU_GROUP(SFX, GEMV_EACH4)                                                  \
            tt += 4;                                                                         \
        }                                                                                    \
        if (tt + 2 <= nt) {                                                                  \
            GEMV_CPU_GROUP(SFX, GEMV_EACH2)                                                  \
            tt += 2;                                                                         \
        }                                                                                    \
        if (tt < nt) GEMV_CPU_GROUP(SFX, GEMV_EACH1)                                         \
    }
TSR_TYPES(DEF)
#undef DEF
#endif
