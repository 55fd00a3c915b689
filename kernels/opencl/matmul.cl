// matmul_{W}(w [N,K] W, x [T,K] W, out [T,N] f32, T, N, K)
// grid (ceil(N/64), ceil(T/64)), block 256, no dynamic local memory.
// out[t,n] = sum_k x[t,k] * w[n,k], accumulated in f32 (bf16 inputs are
// widened when staged). Any T, N, K (K may be 0: zeros); pointers need only
// element alignment.
//
// A classic tiled GEMM: a group computes a 64 (t) x 64 (n) tile of out, a
// work-item a 4 x 4 sub-tile: rows ty + 16*i, columns tx + 16*j (tx, ty in
// 0..15). Per K-slice of MM_KT, the group stages x[t0.., k0..] and
// w[n0.., k0..] in local memory, k-major, zero-padded past T, N and K so the
// inner loop has no edge tests. Strided sub-tiles make neighbouring
// work-items read neighbouring local words (no bank conflicts on a GPU, one
// vector load across work-items when PoCL vectorises its work-item loops)
// and write neighbouring columns of out.
//
// Devices with sub-groups could share the x and w fragments through
// sub-group broadcasts instead of local memory; that variant is not written
// here because the CI device (PoCL) has no sub-groups.

#define MM_TILE 64
#define MM_KT 16
#define MM_SUB 4
#define MM_DIM (MM_TILE / MM_SUB)  // 16 work-items per tile row/column
#define MM_BLOCK (MM_DIM * MM_DIM) // 256
// Local row stride: +1 keeps the staging stores (64 apart) off one bank.
#define MM_LD (MM_TILE + 1)

#define DEF(SFX, W)                                                                          \
    __kernel void matmul_##SFX(const __global W* restrict w, const __global W* restrict x,  \
                               __global float* restrict out, int T, int N, int K) {          \
        __local float xs[MM_KT * MM_LD];                                                     \
        __local float ws[MM_KT * MM_LD];                                                     \
        const int lid = get_local_id(0);                                                     \
        /* Shifts and masks: a div/rem pair makes LLVM emit `freeze`, which */              \
        /* llvm-spirv-15 cannot translate. */                                                \
        const int tx = lid & (MM_DIM - 1);                                                   \
        const int ty = lid >> 4; /* lid / MM_DIM */                                          \
        const int n0 = get_group_id(0) * MM_TILE;                                            \
        const int t0 = get_group_id(1) * MM_TILE;                                            \
        float acc[MM_SUB][MM_SUB];                                                           \
        for (int i = 0; i < MM_SUB; ++i)                                                     \
            for (int j = 0; j < MM_SUB; ++j) acc[i][j] = 0.0f;                               \
        for (int k0 = 0; k0 < K; k0 += MM_KT) {                                              \
            barrier(CLK_LOCAL_MEM_FENCE); /* the previous slice is consumed */               \
            /* Staging: element e = row * MM_KT + kk, so neighbouring work-items read */     \
            /* neighbouring k of one row. */                                                 \
            for (int e = lid; e < MM_TILE * MM_KT; e += MM_BLOCK) {                          \
                const int row = e >> 4; /* e / MM_KT */                                      \
                const int kk = e & (MM_KT - 1);                                              \
                const int k = k0 + kk;                                                       \
                const int t = t0 + row;                                                      \
                const int n = n0 + row;                                                      \
                xs[kk * MM_LD + row] =                                                       \
                    (t < T && k < K) ? tsr_load_##SFX(x, (long)t * K + k) : 0.0f;            \
                ws[kk * MM_LD + row] =                                                       \
                    (n < N && k < K) ? tsr_load_##SFX(w, (long)n * K + k) : 0.0f;            \
            }                                                                                \
            barrier(CLK_LOCAL_MEM_FENCE);                                                    \
            for (int kk = 0; kk < MM_KT; ++kk) {                                             \
                float a[MM_SUB], b[MM_SUB];                                                  \
                for (int i = 0; i < MM_SUB; ++i) a[i] = xs[kk * MM_LD + ty + MM_DIM * i];    \
                for (int j = 0; j < MM_SUB; ++j) b[j] = ws[kk * MM_LD + tx + MM_DIM * j];    \
                for (int i = 0; i < MM_SUB; ++i)                                             \
                    for (int j = 0; j < MM_SUB; ++j) acc[i][j] += a[i] * b[j];               \
            }                                                                                \
        }                                                                                    \
        for (int i = 0; i < MM_SUB; ++i) {                                                   \
            const int t = t0 + ty + MM_DIM * i;                                              \
            for (int j = 0; j < MM_SUB; ++j) {                                               \
                const int n = n0 + tx + MM_DIM * j;                                          \
                if (t < T && n < N) out[(long)t * N + n] = acc[i][j];                        \
            }                                                                                \
        }                                                                                    \
    }
TSR_TYPES(DEF)
#undef DEF
