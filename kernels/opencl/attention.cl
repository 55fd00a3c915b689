// Paged attention: tile listing, prefill (FlashAttention-style), split decode
// and the cross-partition reduce. OpenCL C 1.2 port of
// kernels/cuda/attention.cu: same kernels, parameters, launch shapes and
// outputs; the warp shuffles become local-memory exchanges (no sub-groups).
//
// KV cache layout: [num_blocks, nkv, bs, d] (KV = float or tsr_bf16).
// Key position k of sequence s: block block_tables[s*M + k/bs], offset k%bs.
// Query row j of sequence s (j in 0..q_len) sits at p = seq_len - q_len + j
// and sees keys [lo, hi):
//   hi = causal ? p + 1 : seq_len,   lo = window > 0 ? max(0, p + 1 - window) : 0
// seq_len is clamped to [0, M*bs]; keys in a block id outside [0, num_blocks)
// are invisible and never read.
//
// Kernels (CUDA grid (gx, gy, gz) x block b = NDRange (gx*b, gy, gz) / (b, 1, 1)):
// each declares its block as reqd_work_group_size (the local arrays and
// strides rely on it), so a launch with another local size fails cleanly.
//
//   attention_tiles(qsl [S+1], S, tiles [max_tiles*2], max_tiles)
//       grid (1), block 32. tiles[2i] = sequence, tiles[2i+1] = first query
//       row of tile i (16 rows at most, within one sequence); unused tiles
//       are (-1, 0).
//
//   paged_attention_prefill_{f32,bf16}(q [T,n,d], k_cache, v_cache, qsl [S+1],
//       seq_lens [S], block_tables [S,M], tiles, out [T,n,d], T, S, n_heads,
//       nkv, d, bs, M, num_blocks, scale, causal, window, softcap, smem)
//       grid (max_tiles, n_heads), block 128, d a multiple of 16 up to 256.
//       smem: (16*d + 32*d + 16*32) * 4 bytes (+ 1280 bytes of static
//       __local). Rows outside every tile are not written.
//
//   paged_attention_decode_{f32,bf16}(q [T,n,d], k_cache, v_cache, qsl,
//       seq_lens, block_tables, out [T,n,d], part_out [T,n,P,d],
//       part_ml [T,n,P,2], T, S, n_heads, nkv, d, bs, M, num_blocks, scale,
//       causal, window, softcap, partition_tokens, num_partitions P, smem)
//       grid (T, nkv * ceil(G/8), P), block 128, G = n_heads / nkv, d even.
//       smem: (H*d + H*partition_tokens) * 4 bytes, H = min(G, 8) (+ 8256
//       bytes of static __local). P == 1: out = softmax(scores) V (zero
//       when no key is visible). P > 1: part_out = sum over the partition's
//       keys of exp(score - m) V and part_ml = (m, l) with m the
//       partition's max score (-inf when none) and l = sum exp(score - m);
//       out is left to paged_attention_reduce. part_out / part_ml are not
//       touched (may be null) when P == 1.
//
//   paged_attention_reduce(part_out, part_ml, out, T, n_heads, d, P)
//       grid (T, n_heads), block 128. out = sum_p exp(m_p - M) part_out_p /
//       sum_p exp(m_p - M) l_p, M = max_p m_p; zero when no key was visible.

#define ATT_TILE_Q 16  // query rows per prefill tile
#define ATT_TILE_K 32  // keys per prefill chunk
#define ATT_MAX_G 8    // query heads per decode block (of a KV head's G)
#define ATT_MAX_D 256  // max head dim for the prefill private accumulator
#define ATT_BLOCK 128  // work-group size of prefill, decode and reduce

// Helpers that take private arrays by pointer are forced inline so that the
// arrays stay in registers.
#define ATT_INLINE static inline __attribute__((always_inline))

// Note on loops: loops whose results are used after them declare their
// counter before the loop (`int k; for (k = ...)`), and attention_tiles
// walks its tiles in one flat loop. With the counter declared in the `for`,
// clang 15 -O2 may place the loop's exit block before its body; llvm-spirv 15
// keeps LLVM's block order and spirv-val then rejects the SPIR-V (a value
// used before its definition). For the same reason the decode helpers loop
// over heads instead of unrolling guarded per-head arrays.

// Largest s in [0, S) with qsl[s] <= t, or -1 when t is a padding row.
TSR_INLINE int att_find_seq(__global const int* qsl, int S, int t) {
    if (S <= 0 || t < qsl[0] || t >= qsl[S]) return -1;
    int lo = 0, hi = S - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (qsl[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

TSR_INLINE int att_seq_len(__global const int* seq_lens, int s, int M, int bs) {
    long L = seq_lens[s];
    const long cap = (long)M * bs;
    if (L > cap) L = cap;
    if (L < 0) L = 0;
    return (int)L;
}

TSR_INLINE int att_lo(int p, int window) { return window > 0 ? max(0, p + 1 - window) : 0; }

TSR_INLINE int att_hi(int p, int seq_len, int causal) {
    return causal ? min(p + 1, seq_len) : seq_len;
}

TSR_INLINE float att_score(float dot, float scale, float softcap) {
    float x = scale * dot;
    if (softcap > 0.0f) x = softcap * tanh(x / softcap);
    return x;
}

// ---------------------------------------------------------------------------
// attention_tiles: grid (1), block 32. One work-item lists the tiles (S is
// small); the group then fills the unused tail.

__kernel __attribute__((reqd_work_group_size(32, 1, 1))) void attention_tiles(
    __global const int* restrict qsl, int S, __global int* restrict tiles, int max_tiles) {
    __local int count[1];  // an array: clang's uninitialised-use check skips it
    const int tid = (int)get_local_id(0);
    if (tid == 0) {
        // One flat loop over (sequence, tile start): see the note on loops.
        int i = 0;
        int s = 0;
        int st = 0;
        int end = 0;
        if (S > 0) {
            st = qsl[0];
            end = qsl[1];
        }
        while (s < S) {
            if (st < end) {
                if (i < max_tiles) {
                    tiles[2 * i] = s;
                    tiles[2 * i + 1] = st;
                }
                ++i;
                st += ATT_TILE_Q;
            } else if (++s < S) {
                st = qsl[s];
                end = qsl[s + 1];
            }
        }
        count[0] = i < max_tiles ? i : max_tiles;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = count[0] + tid; i < max_tiles; i += (int)get_local_size(0)) {
        tiles[2 * i] = -1;
        tiles[2 * i + 1] = 0;
    }
}

// ---------------------------------------------------------------------------
// paged_attention_prefill_{KV}: grid (max_tiles, n_heads), block 128.
//
// Work-item tid owns tile row r = tid / 8 and column group c8 = tid % 8:
//   scores: keys c8 + 8*i (i < 4) of the 32-key chunk;
//   output: dims 2*c8 + 16*j + {0,1} (j < d/16) -> acc[32] in registers.
// The CUDA row max/sum over the 8 lanes of a row (xor shuffles) become
// per-work-item partials in local memory (pmax, psum) read back by the 8
// work-items of the row after the barriers the chunk needs anyway, so a
// chunk still costs 4 barriers. Every work-item of a row reads the same
// partials in the same order, so they all hold the same m and l.
// Local: qs [16][d], kvs [32][d] (K then V), ps [32][16] (probabilities,
// transposed), plus static s_base [32], pmax [128], psum [128].

typedef struct {
    int start;  // first query row of the tile
    int nrows;  // rows of the tile (<= 16)
    int h;      // query head
    int kvh;    // its KV head
    int pos0;   // position of tile row 0
    int kmin;   // keys [kmin, kmax) cover every row's visible keys
    int kmax;
    int L;      // clamped sequence length
    long tbl;   // first block-table entry of the sequence
} att_ptile;

// Fills *tl for this work-group; 0 when the group has nothing to do (uniform
// across the group: it depends on group ids and arguments only).
TSR_INLINE int att_prefill_setup(att_ptile* tl, __global const int* tiles,
                                 __global const int* qsl, __global const int* seq_lens, int T,
                                 int S, int n_heads, int nkv, int d, int bs, int M, int causal,
                                 int window) {
    const int tile = (int)get_group_id(0);
    const int h = (int)get_group_id(1);
    const int s = tiles[2 * tile];
    if (s < 0 || s >= S || h >= n_heads || nkv <= 0) return 0;
    if (d <= 0 || d > ATT_MAX_D || (d & 15) != 0 || bs <= 0) return 0;
    const int G = n_heads / nkv;
    if (G <= 0) return 0;
    const int start = tiles[2 * tile + 1];
    const int q0 = qsl[s];
    const int q1 = qsl[s + 1];
    if (start < q0 || start >= q1 || start >= T) return 0;
    tl->start = start;
    tl->nrows = min(ATT_TILE_Q, min(q1, T) - start);
    tl->h = h;
    tl->kvh = h / G;
    tl->L = att_seq_len(seq_lens, s, M, bs);
    tl->pos0 = tl->L - (q1 - q0) + (start - q0);
    tl->kmin = att_lo(tl->pos0, window);
    tl->kmax = att_hi(tl->pos0 + tl->nrows - 1, tl->L, causal);
    tl->tbl = (long)s * M;
    return 1;
}

// Cache offsets of the chunk's keys (-1: not readable).
TSR_INLINE void att_prefill_bases(__local long* s_base, __global const int* block_tables,
                                  const att_ptile* tl, int k0, int nkv, int d, int bs,
                                  int num_blocks) {
    const int tid = (int)get_local_id(0);
    if (tid < ATT_TILE_K) {
        const int k = k0 + tid;
        long base = -1;
        if (k < tl->kmax) {
            const int blk = k / bs;
            const int bid = block_tables[tl->tbl + blk];
            if (bid >= 0 && bid < num_blocks) {
                base = (((long)bid * nkv + tl->kvh) * bs + (k - blk * bs)) * d;
            }
        }
        s_base[tid] = base;
    }
}

// Masked, scaled scores of row r for keys c8 + 8*i into sc[4]; this
// work-item's max into pmax[tid].
ATT_INLINE void att_prefill_scores(__local const float* qs, __local const float* kvs,
                                   __local const long* s_base, __local float* pmax, int r,
                                   int c8, int d, int k0, int rlo, int rhi, float scale,
                                   float softcap, float* sc) {
    const int d4 = d >> 2;
    const int rot = c8 % d4;  // rotate the start so the 8 keys hit different banks
    __local const float* qrow = qs + r * d;
    __local const float* kp = kvs + c8 * d;
    for (int i = 0; i < 4; ++i) sc[i] = 0.0f;
    int j;
    for (j = 0; j < d4; ++j) {
        int j4 = j + rot;
        if (j4 >= d4) j4 -= d4;
        const float4 qv = vload4(0, qrow + 4 * j4);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float4 kv = vload4(0, kp + i * 8 * d + 4 * j4);
            sc[i] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
        }
    }
    float cmax = TSR_NEG_INF;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int c = c8 + 8 * i;
        const int k = k0 + c;
        const bool vis = k >= rlo && k < rhi && s_base[c] >= 0;  // rhi == 0 for padding rows
        sc[i] = vis ? att_score(sc[i], scale, softcap) : TSR_NEG_INF;
        cmax = fmax(cmax, sc[i]);
    }
    pmax[get_local_id(0)] = cmax;
}

// Online-softmax step of row r: new max from the row's 8 partial maxima,
// probabilities of this work-item's keys into ps, their sum into psum[tid].
// Returns the rescale factor of the running sums; updates *m.
ATT_INLINE float att_prefill_softmax(float* sc, float* m, __local const float* pmax,
                                     __local float* ps, __local float* psum, int r, int c8) {
    float cmax = pmax[r * 8];
    for (int o = 1; o < 8; ++o) cmax = fmax(cmax, pmax[r * 8 + o]);
    const float mn = fmax(*m, cmax);
    float alpha = 1.0f;
    float rs = 0.0f;
    if (mn != TSR_NEG_INF) {
        alpha = exp(*m - mn);  // m == -inf -> 0
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            sc[i] = exp(sc[i] - mn);  // invisible -> 0
            rs += sc[i];
        }
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) sc[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) ps[(c8 + 8 * i) * ATT_TILE_Q + r] = sc[i];
    psum[get_local_id(0)] = rs;
    *m = mn;
    return alpha;
}

// acc = acc * alpha + P V over the chunk's nk keys; l likewise.
ATT_INLINE void att_prefill_pv(float* acc, float* l, float alpha, __local const float* psum,
                               __local const float* ps, __local const float* kvs, int r, int c8,
                               int d, int nk) {
    float rs = psum[r * 8];
    for (int o = 1; o < 8; ++o) rs += psum[r * 8 + o];
    *l = *l * alpha + rs;
#pragma unroll
    for (int j = 0; j < 2 * (ATT_MAX_D / 16); ++j) acc[j] *= alpha;
    const int d16 = d >> 4;
    int c;
    for (c = 0; c < nk; ++c) {
        const float pc = ps[c * ATT_TILE_Q + r];
        __local const float* vrow = kvs + c * d + 2 * c8;
#pragma unroll
        for (int j = 0; j < ATT_MAX_D / 16; ++j) {
            if (j < d16) {
                const float2 v = vload2(0, vrow + 16 * j);
                acc[2 * j] += pc * v.x;
                acc[2 * j + 1] += pc * v.y;
            }
        }
    }
}

ATT_INLINE void att_prefill_store(__global float* out, const float* acc, float l,
                                  const att_ptile* tl, int r, int c8, int n_heads, int d) {
    if (r >= tl->nrows) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    __global float* orow = out + ((long)(tl->start + r) * n_heads + tl->h) * d + 2 * c8;
    const int d16 = d >> 4;
#pragma unroll
    for (int j = 0; j < ATT_MAX_D / 16; ++j) {
        if (j < d16) vstore2((float2)(acc[2 * j] * inv, acc[2 * j + 1] * inv), 0, orow + 16 * j);
    }
}

// Typed piece: a [32][d] tile of K or V rows into local memory (zeros for
// unreadable keys).
#define ATT_DEF_TILE(SFX, KV)                                                             \
    TSR_INLINE void att_prefill_tile_##SFX(__global const KV* restrict cache,             \
                                           __local float* kvs, __local const long* s_base, \
                                           int d) {                                        \
        const int npr = d >> 1;                                                            \
        for (int i = (int)get_local_id(0); i < ATT_TILE_K * npr; i += ATT_BLOCK) {         \
            const int c = i / npr;                                                         \
            const int pr = i - c * npr;                                                    \
            const long base = s_base[c];                                                   \
            float2 v = (float2)(0.0f, 0.0f);                                               \
            if (base >= 0) v = tsr_load2_##SFX(cache, base + 2 * pr);                      \
            vstore2(v, 0, kvs + c * d + 2 * pr);                                           \
        }                                                                                  \
    }
TSR_TYPES(ATT_DEF_TILE)
#undef ATT_DEF_TILE

// The early return is uniform (att_prefill_setup) and comes before every
// barrier; the chunk loop's bounds are uniform too.
#define ATT_DEF_PREFILL(SFX, KV)                                                              \
    __kernel __attribute__((reqd_work_group_size(ATT_BLOCK, 1, 1))) void                      \
        paged_attention_prefill_##SFX(                                                        \
            __global const float* restrict q, __global const KV* restrict k_cache,            \
            __global const KV* restrict v_cache, __global const int* restrict qsl,            \
            __global const int* restrict seq_lens, __global const int* restrict block_tables, \
            __global const int* restrict tiles, __global float* restrict out, int T, int S,   \
            int n_heads, int nkv, int d, int bs, int M, int num_blocks, float scale,          \
            int causal, int window, float softcap, __local float* smem) {                     \
        __local long s_base[ATT_TILE_K];                                                      \
        __local float pmax[ATT_BLOCK];                                                        \
        __local float psum[ATT_BLOCK];                                                        \
        att_ptile tl;                                                                         \
        if (!att_prefill_setup(&tl, tiles, qsl, seq_lens, T, S, n_heads, nkv, d, bs, M,       \
                               causal, window))                                               \
            return;                                                                           \
        __local float* qs = smem;                   /* [16][d] */                             \
        __local float* kvs = smem + ATT_TILE_Q * d; /* [32][d] */                             \
        __local float* ps = kvs + ATT_TILE_K * d;   /* [32][16] */                            \
        const int tid = (int)get_local_id(0);                                                 \
        const int r = tid >> 3;                                                               \
        const int c8 = tid & 7;                                                               \
        for (int i = tid; i < ATT_TILE_Q * d; i += ATT_BLOCK) {                               \
            const int rr = i / d;                                                             \
            const int dim = i - rr * d;                                                       \
            qs[i] = rr < tl.nrows ? q[((long)(tl.start + rr) * n_heads + tl.h) * d + dim]     \
                                  : 0.0f;                                                     \
        }                                                                                     \
        const bool rvalid = r < tl.nrows;                                                     \
        const int rlo = rvalid ? att_lo(tl.pos0 + r, window) : 0;                             \
        const int rhi = rvalid ? att_hi(tl.pos0 + r, tl.L, causal) : 0;                       \
        float m = TSR_NEG_INF;                                                                \
        float l = 0.0f;                                                                       \
        float acc[2 * (ATT_MAX_D / 16)];                                                      \
        for (int j = 0; j < 2 * (ATT_MAX_D / 16); ++j) acc[j] = 0.0f;                         \
        int k0;                                                                               \
        for (k0 = tl.kmin; k0 < tl.kmax; k0 += ATT_TILE_K) {                                  \
            att_prefill_bases(s_base, block_tables, &tl, k0, nkv, d, bs, num_blocks);         \
            barrier(CLK_LOCAL_MEM_FENCE); /* s_base; last chunk's PV done with kvs, ps */     \
            att_prefill_tile_##SFX(k_cache, kvs, s_base, d);                                  \
            barrier(CLK_LOCAL_MEM_FENCE); /* K tile (and qs on the first chunk) */            \
            float sc[4];                                                                      \
            att_prefill_scores(qs, kvs, s_base, pmax, r, c8, d, k0, rlo, rhi, scale, softcap, \
                               sc);                                                           \
            barrier(CLK_LOCAL_MEM_FENCE); /* pmax; K reads done */                            \
            const float alpha = att_prefill_softmax(sc, &m, pmax, ps, psum, r, c8);           \
            att_prefill_tile_##SFX(v_cache, kvs, s_base, d);                                  \
            barrier(CLK_LOCAL_MEM_FENCE); /* V tile, ps, psum */                              \
            att_prefill_pv(acc, &l, alpha, psum, ps, kvs, r, c8, d,                           \
                           min(ATT_TILE_K, tl.kmax - k0));                                    \
        }                                                                                     \
        att_prefill_store(out, acc, l, &tl, r, c8, n_heads, d);                               \
    }
TSR_TYPES(ATT_DEF_PREFILL)
#undef ATT_DEF_PREFILL

// ---------------------------------------------------------------------------
// paged_attention_decode_{KV}: grid (T, nkv * ceil(G/8), num_partitions),
// block 128, smem (H*d + H*partition_tokens) * 4, H = min(G, 8).
//
// Group (t, y, p) handles H query heads of KV head g = y / ceil(G/8) (heads
// g*G + h0 .. of row t, h0 = 8 * (y mod ceil(G/8))) over the keys
// [p*pt, (p+1)*pt) intersected with [lo, hi).
//   Scores: a work-item owns whole keys (a + tid, a + tid + 128, ...) and
//     computes the H dot products over d itself: no cross-work-item
//     reduction per key. The heads are the outer loop, so a key's K row is
//     read H times, from cache after the first.
//   Softmax: work-item hh < H takes head hh's max over the partition; every
//     work-item then turns its own keys' scores into weights and leaves
//     per-head partial sums in red, which work-item hh < H adds up.
//   PV: as in CUDA, a work-item owns a dim pair (V read as pairs); when
//     d/2 < 128 the keys are split over 128/(d/2) work-item sets whose
//     partial sums go to red and are added in a fixed order. Heads are again
//     the outer loop (V from cache after the first head).
// Local: qs [H][d], sc [pt][H] (key-major), static s_m [8], s_l [8],
// red [2*8*128].

typedef struct {
    int t;      // query row
    int p;      // partition
    int g;      // KV head
    int H;      // heads of this group
    int a;      // keys [a, b) of this group; empty for padding rows
    int b;
    int p0;     // first key of the partition
    long tbl;   // first block-table entry of the sequence
    long orow;  // row of the group's first query head in q / out
} att_dtask;

// Fills *dt for this work-group; 0 on invalid launch parameters only
// (uniform across the group).
TSR_INLINE int att_decode_setup(att_dtask* dt, __global const int* qsl,
                                __global const int* seq_lens, int T, int S, int n_heads,
                                int nkv, int d, int bs, int M, int causal, int window, int pt) {
    const int t = (int)get_group_id(0);
    const int p = (int)get_group_id(2);
    if (t >= T || nkv <= 0 || d < 2 || (d & 1) || bs <= 0 || pt <= 0) return 0;
    const int G = n_heads / nkv;
    if (G <= 0) return 0;
    const int hsplit = (G + ATT_MAX_G - 1) / ATT_MAX_G;  // groups per KV head
    const int y = (int)get_group_id(1);
    const int g = y / hsplit;
    const int h0 = (y - g * hsplit) * ATT_MAX_G;
    if (g >= nkv) return 0;
    dt->t = t;
    dt->p = p;
    dt->g = g;
    dt->H = min(ATT_MAX_G, G - h0);
    dt->p0 = p * pt;
    dt->a = dt->p0;
    dt->b = dt->p0;
    dt->tbl = 0;
    dt->orow = (long)t * n_heads + (long)g * G + h0;
    const int s = att_find_seq(qsl, S, t);
    if (s >= 0) {
        const int L = att_seq_len(seq_lens, s, M, bs);
        const int q0 = qsl[s];
        const int pos = L - (qsl[s + 1] - q0) + (t - q0);
        dt->a = max(att_lo(pos, window), dt->p0);
        dt->b = min(att_hi(pos, L, causal), dt->p0 + pt);
        if (dt->b < dt->a) dt->b = dt->a;
        dt->tbl = (long)s * M;
    }
    return 1;
}

// Work-item hh < H: max of head hh's scores over the group's keys.
TSR_INLINE void att_decode_max(__local const float* sc, __local float* s_m,
                               const att_dtask* dt) {
    const int hh = (int)get_local_id(0);
    if (hh >= dt->H) return;
    float m = TSR_NEG_INF;
    int k;
    for (k = dt->a; k < dt->b; ++k) m = fmax(m, sc[(k - dt->p0) * dt->H + hh]);
    s_m[hh] = m;
}

// Scores of this work-item's keys -> weights exp(score - m) (0 when the
// head sees no key); per-head partial sums into red[hh*128 + tid].
TSR_INLINE void att_decode_exp(__local float* sc, __local const float* s_m, __local float* red,
                               const att_dtask* dt) {
    const int tid = (int)get_local_id(0);
    const int H = dt->H;
    int hh;
    for (hh = 0; hh < H; ++hh) {
        const float m = s_m[hh];
        float part = 0.0f;
        int k;
        for (k = dt->a + tid; k < dt->b; k += ATT_BLOCK) {
            __local float* w = sc + (k - dt->p0) * H + hh;
            const float e = m != TSR_NEG_INF ? exp(*w - m) : 0.0f;
            *w = e;
            part += e;
        }
        red[hh * ATT_BLOCK + tid] = part;
    }
}

// Work-item hh < H: head hh's sum of weights, in a fixed order.
TSR_INLINE void att_decode_sum(__local const float* red, __local float* s_l,
                               const att_dtask* dt) {
    const int hh = (int)get_local_id(0);
    if (hh >= dt->H) return;
    float l = 0.0f;
    int i;
    for (i = 0; i < ATT_BLOCK; ++i) l += red[hh * ATT_BLOCK + i];
    s_l[hh] = l;
}

// Final value v (unnormalised) of head hh, dim `dim`.
TSR_INLINE void att_decode_put(__global float* out, __global float* part_out,
                               __local const float* s_l, const att_dtask* dt, int hh, int dim,
                               int d, int P, float v) {
    if (P == 1) {
        const float l = s_l[hh];
        out[(dt->orow + hh) * d + dim] = l > 0.0f ? v / l : 0.0f;
    } else {
        part_out[((dt->orow + hh) * P + dt->p) * d + dim] = v;
    }
}

// Typed pieces: the scores of this work-item's keys into sc (-inf for
// unreadable keys), and head hh's PV sums for dim pair pr over the keys
// kstart, kstart + kstep, ... < b.
#define ATT_DEF_DECODE_HELPERS(SFX, KV)                                                        \
    TSR_INLINE void att_decode_scores_##SFX(                                                   \
        __global const KV* restrict k_cache, __global const int* restrict block_tables,        \
        __local const float* qs, __local float* sc, const att_dtask* dt, int nkv, int d,       \
        int bs, int num_blocks, float scale, float softcap) {                                  \
        const int H = dt->H;                                                                   \
        const int npairs = d >> 1;                                                             \
        int k;                                                                                 \
        for (k = dt->a + (int)get_local_id(0); k < dt->b; k += ATT_BLOCK) {                    \
            const int blk = k / bs;                                                            \
            const int bid = block_tables[dt->tbl + blk];                                       \
            __local float* w = sc + (k - dt->p0) * H;                                          \
            const bool valid = bid >= 0 && bid < num_blocks;                                   \
            const long base = valid ? (((long)bid * nkv + dt->g) * bs + (k - blk * bs)) * d    \
                                    : 0;                                                       \
            int hh;                                                                            \
            for (hh = 0; hh < H; ++hh) {                                                       \
                __local const float* qrow = qs + hh * d;                                       \
                float dot = 0.0f;                                                              \
                int pr;                                                                        \
                for (pr = 0; valid && pr < npairs; ++pr) {                                     \
                    const float2 kv = tsr_load2_##SFX(k_cache, base + 2 * pr);                 \
                    const float2 qv = vload2(0, qrow + 2 * pr);                                \
                    dot += qv.x * kv.x + qv.y * kv.y;                                          \
                }                                                                              \
                w[hh] = valid ? att_score(dot, scale, softcap) : TSR_NEG_INF;                  \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    TSR_INLINE float2 att_decode_pv_##SFX(__global const KV* restrict v_cache,                 \
                                          __global const int* restrict block_tables,           \
                                          __local const float* sc, const att_dtask* dt,        \
                                          int hh, int kstart, int kstep, int pr, int nkv,      \
                                          int bs, int d, int num_blocks) {                     \
        float2 acc = (float2)(0.0f, 0.0f);                                                     \
        int k = kstart;                                                                        \
        int blk = k / bs;                                                                      \
        int off = k - blk * bs;                                                                \
        for (; k < dt->b; k += kstep) {                                                        \
            const int bid = block_tables[dt->tbl + blk];                                       \
            if (bid >= 0 && bid < num_blocks) {                                                \
                const float2 v = tsr_load2_##SFX(                                              \
                    v_cache, (((long)bid * nkv + dt->g) * bs + off) * d + 2 * pr);             \
                const float wk = sc[(k - dt->p0) * dt->H + hh];                                \
                acc.x += wk * v.x;                                                             \
                acc.y += wk * v.y;                                                             \
            }                                                                                  \
            off += kstep;                                                                      \
            while (off >= bs) {                                                                \
                off -= bs;                                                                     \
                ++blk;                                                                         \
            }                                                                                  \
        }                                                                                      \
        return acc;                                                                            \
    }
TSR_TYPES(ATT_DEF_DECODE_HELPERS)
#undef ATT_DEF_DECODE_HELPERS

// The early return is uniform (att_decode_setup) and comes before every
// barrier; the PV pass loop and the nsplit branch are uniform too.
#define ATT_DEF_DECODE(SFX, KV)                                                               \
    __kernel __attribute__((reqd_work_group_size(ATT_BLOCK, 1, 1))) void                      \
        paged_attention_decode_##SFX(                                                         \
            __global const float* restrict q, __global const KV* restrict k_cache,            \
            __global const KV* restrict v_cache, __global const int* restrict qsl,            \
            __global const int* restrict seq_lens, __global const int* restrict block_tables, \
            __global float* restrict out, __global float* restrict part_out,                  \
            __global float* restrict part_ml, int T, int S, int n_heads, int nkv, int d,      \
            int bs, int M, int num_blocks, float scale, int causal, int window,               \
            float softcap, int partition_tokens, int num_partitions, __local float* smem) {   \
        __local float s_m[ATT_MAX_G];                                                         \
        __local float s_l[ATT_MAX_G];                                                         \
        __local float red[2 * ATT_MAX_G * ATT_BLOCK];                                         \
        att_dtask dt;                                                                         \
        if (!att_decode_setup(&dt, qsl, seq_lens, T, S, n_heads, nkv, d, bs, M, causal,       \
                              window, partition_tokens))                                      \
            return;                                                                           \
        const int P = num_partitions;                                                         \
        const int H = dt.H;                                                                   \
        const int tid = (int)get_local_id(0);                                                 \
        const int npairs = d >> 1;                                                            \
        __local float* qs = smem;         /* [H][d] */                                        \
        __local float* sc = smem + H * d; /* [pt][H] */                                       \
        if (dt.b > dt.a) {                                                                    \
            int i;                                                                            \
            for (i = tid; i < H * d; i += ATT_BLOCK) qs[i] = q[dt.orow * d + i];              \
        }                                                                                     \
        barrier(CLK_LOCAL_MEM_FENCE); /* qs */                                                \
        att_decode_scores_##SFX(k_cache, block_tables, qs, sc, &dt, nkv, d, bs, num_blocks,   \
                                scale, softcap);                                              \
        barrier(CLK_LOCAL_MEM_FENCE); /* sc */                                                \
        att_decode_max(sc, s_m, &dt);                                                         \
        barrier(CLK_LOCAL_MEM_FENCE); /* s_m */                                               \
        att_decode_exp(sc, s_m, red, &dt);                                                    \
        barrier(CLK_LOCAL_MEM_FENCE); /* weights in sc, partial sums in red */                \
        att_decode_sum(red, s_l, &dt);                                                        \
        barrier(CLK_LOCAL_MEM_FENCE); /* s_l; red free again */                               \
        /* PV in passes of `chunk` dim pairs (one pass for d <= 256); within a pass */        \
        /* the keys are split over `nsplit` work-item sets. */                                \
        const int chunk = min(npairs, ATT_BLOCK);                                             \
        const int nsplit = ATT_BLOCK / chunk;                                                 \
        const int ks = tid / chunk;                                                           \
        const int prl = tid - ks * chunk;                                                     \
        const int w2 = 2 * chunk;                                                             \
        int pbase;                                                                            \
        for (pbase = 0; pbase < npairs; pbase += chunk) {                                     \
            const int pr = pbase + prl;                                                       \
            const bool act = ks < nsplit && pr < npairs;                                      \
            int hh;                                                                           \
            if (nsplit == 1) {                                                                \
                for (hh = 0; act && hh < H; ++hh) {                                           \
                    const float2 acc = att_decode_pv_##SFX(v_cache, block_tables, sc, &dt, hh, \
                                                           dt.a, 1, pr, nkv, bs, d,           \
                                                           num_blocks);                       \
                    att_decode_put(out, part_out, s_l, &dt, hh, 2 * pr, d, P, acc.x);         \
                    att_decode_put(out, part_out, s_l, &dt, hh, 2 * pr + 1, d, P, acc.y);     \
                }                                                                             \
            } else {                                                                          \
                /* red [nsplit][H][2*chunk], added over the sets in a fixed order */          \
                for (hh = 0; act && hh < H; ++hh) {                                           \
                    const float2 acc = att_decode_pv_##SFX(v_cache, block_tables, sc, &dt, hh, \
                                                           dt.a + ks, nsplit, pr, nkv, bs, d, \
                                                           num_blocks);                       \
                    vstore2(acc, 0, red + (ks * H + hh) * w2 + 2 * prl);                      \
                }                                                                             \
                barrier(CLK_LOCAL_MEM_FENCE);                                                 \
                int i;                                                                        \
                for (i = tid; i < H * w2; i += ATT_BLOCK) {                                   \
                    const int h2 = i / w2;                                                    \
                    const int j = i - h2 * w2;                                                \
                    float v = 0.0f;                                                           \
                    int sp;                                                                   \
                    for (sp = 0; sp < nsplit; ++sp) v += red[(sp * H + h2) * w2 + j];         \
                    if (2 * pbase + j < d) {                                                  \
                        att_decode_put(out, part_out, s_l, &dt, h2, 2 * pbase + j, d, P, v);  \
                    }                                                                         \
                }                                                                             \
                barrier(CLK_LOCAL_MEM_FENCE); /* red is rewritten by the next pass */         \
            }                                                                                 \
        }                                                                                     \
        if (P > 1 && tid < H) {                                                               \
            __global float* ml = part_ml + ((dt.orow + tid) * P + dt.p) * 2;                  \
            ml[0] = s_m[tid];                                                                 \
            ml[1] = s_l[tid];                                                                 \
        }                                                                                     \
    }
TSR_TYPES(ATT_DEF_DECODE)
#undef ATT_DEF_DECODE

// ---------------------------------------------------------------------------
// paged_attention_reduce: grid (T, n_heads), block 128; work-item owns dims
// (no barriers, so the early returns are free).

__kernel __attribute__((reqd_work_group_size(ATT_BLOCK, 1, 1))) void paged_attention_reduce(
    __global const float* restrict part_out, __global const float* restrict part_ml,
    __global float* restrict out, int T, int n_heads, int d, int num_partitions) {
    const int t = (int)get_group_id(0);
    const int h = (int)get_group_id(1);
    if (t >= T || h >= n_heads) return;
    const int P = num_partitions;
    const long row = (long)t * n_heads + h;
    __global const float* ml = part_ml + row * P * 2;
    __global const float* po = part_out + row * P * d;
    __global float* o = out + row * d;
    const int tid = (int)get_local_id(0);

    int p;
    float gm = TSR_NEG_INF;
    for (p = 0; p < P; ++p) gm = fmax(gm, ml[2 * p]);
    float gl = 0.0f;
    if (gm != TSR_NEG_INF) {
        for (p = 0; p < P; ++p) gl += exp(ml[2 * p] - gm) * ml[2 * p + 1];
    }
    if (gm == TSR_NEG_INF || !(gl > 0.0f)) {
        for (int dim = tid; dim < d; dim += ATT_BLOCK) o[dim] = 0.0f;
        return;
    }
    const float inv = 1.0f / gl;
    for (int dim = tid; dim < d; dim += ATT_BLOCK) {
        float acc = 0.0f;
        for (p = 0; p < P; ++p) {
            const float mp = ml[2 * p];
            if (mp != TSR_NEG_INF) acc += exp(mp - gm) * po[(long)p * d + dim];
        }
        o[dim] = acc * inv;
    }
}
