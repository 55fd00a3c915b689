#include "compat.h"

// Paged attention: tile listing, prefill (FlashAttention-style), split decode
// and the cross-partition reduce.
//
// KV cache layout: [num_blocks, nkv, bs, d] (KV = float or tsr_bf16).
// Key position k of sequence s: block block_tables[s*M + k/bs], offset k%bs.
// Query row j of sequence s (j in 0..q_len) sits at p = seq_len - q_len + j
// and sees keys [lo, hi):
//   hi = causal ? p + 1 : seq_len,   lo = window > 0 ? max(0, p + 1 - window) : 0
// seq_len is clamped to [0, M*bs]; keys in a block id outside [0, num_blocks)
// are invisible and never read.
//
// Shared memory (dynamic, bytes), exactly the ABI; nothing added:
//   paged_attention_prefill_{KV}: (16*d + 32*d + 16*32) * 4
//       (+ 256 bytes of static __shared__ for the per-key cache offsets)
//   paged_attention_decode_{KV}:  (H*d + H*partition_tokens) * 4 with
//       H = min(G, 8) heads per block (+ 64 bytes of static __shared__ for
//       the per-head m, l)
// For d = 256 the prefill needs 51200 bytes of dynamic smem, above the 48 KiB
// default: the host must raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.

#define ATT_TILE_Q 16   // query rows per prefill tile
#define ATT_TILE_K 32   // keys per prefill chunk
#define ATT_MAX_G 8     // query heads per decode block (of a KV head's G)
#define ATT_MAX_D 256   // max head dim for the prefill register accumulator

TSR_EXTERN_SHARED __attribute__((aligned(16))) float smem[];

// Largest s in [0, S) with qsl[s] <= t, or -1 when t is a padding row.
TSR_INLINE int att_find_seq(const int* __restrict__ qsl, int S, int t) {
    if (S <= 0 || t < qsl[0] || t >= qsl[S]) return -1;
    int lo = 0, hi = S - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (qsl[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

TSR_INLINE int att_seq_len(const int* __restrict__ seq_lens, int s, int M, int bs) {
    long long L = seq_lens[s];
    const long long cap = (long long)M * bs;
    if (L > cap) L = cap;
    if (L < 0) L = 0;
    return (int)L;
}

TSR_INLINE int att_lo(int p, int window) {
    return window > 0 ? max(0, p + 1 - window) : 0;
}

TSR_INLINE int att_hi(int p, int seq_len, int causal) {
    return causal ? min(p + 1, seq_len) : seq_len;
}

TSR_INLINE float att_score(float dot, float scale, float softcap) {
    float x = scale * dot;
    if (softcap > 0.0f) x = softcap * tanhf(x / softcap);
    return x;
}

// ---------------------------------------------------------------------------
// attention_tiles(qsl [S+1], S, tiles [max_tiles*2], max_tiles)
// grid (1), block 32.
extern "C" __global__ void __launch_bounds__(32)
    attention_tiles(const int* __restrict__ qsl, int S, int* __restrict__ tiles, int max_tiles) {
    __shared__ int count;
    if (threadIdx.x == 0) {
        int i = 0;
        for (int s = 0; s < S; ++s) {
            const int end = qsl[s + 1];
            for (int st = qsl[s]; st < end; st += ATT_TILE_Q) {
                if (i < max_tiles) {
                    tiles[2 * i] = s;
                    tiles[2 * i + 1] = st;
                }
                ++i;
            }
        }
        count = i < max_tiles ? i : max_tiles;
    }
    __syncthreads();
    for (int i = count + threadIdx.x; i < max_tiles; i += blockDim.x) {
        tiles[2 * i] = -1;
        tiles[2 * i + 1] = 0;
    }
}

// ---------------------------------------------------------------------------
// paged_attention_prefill_{KV}: grid (max_tiles, n_heads), block 128.
//
// Thread tid owns tile row r = tid / 8 and column group c8 = tid % 8:
//   scores: keys c8 + 8*i (i < 4) of the 32-key chunk;
//   output: dims 2*c8 + 16*j + {0,1} (j < d/16) -> acc[32] in registers.
// The 8 threads of a row are 8 consecutive lanes of one warp, so row max/sum
// use xor shuffles 1, 2, 4. Smem: qs [16][d], kvs [32][d] (K then V),
// ps [32][16] (probabilities, transposed to avoid bank conflicts).
template <typename KV>
TSR_INLINE void prefill_load_tile(const KV* __restrict__ cache, float* kvs,
                                  const long long* s_base, int d) {
    const int npr = d >> 1;
    for (int i = threadIdx.x; i < ATT_TILE_K * npr; i += blockDim.x) {
        const int c = i / npr;
        const int pr = i - c * npr;
        const long long base = s_base[c];
        float2 v = make_float2(0.0f, 0.0f);
        if (base >= 0) v = tsr_load2_f32(cache, base + 2 * pr);
        *reinterpret_cast<float2*>(kvs + c * d + 2 * pr) = v;
    }
}

template <typename KV>
TSR_INLINE void prefill_impl(const float* __restrict__ q, const KV* __restrict__ k_cache,
                             const KV* __restrict__ v_cache, const int* __restrict__ qsl,
                             const int* __restrict__ seq_lens, const int* __restrict__ block_tables,
                             const int* __restrict__ tiles, float* __restrict__ out, int T, int S,
                             int n_heads, int nkv, int d, int bs, int M, int num_blocks,
                             float scale, int causal, int window, float softcap) {
    __shared__ long long s_base[ATT_TILE_K];

    const int tile = blockIdx.x;
    const int h = blockIdx.y;
    // Every early return below is uniform across the block (before any barrier).
    const int s = tiles[2 * tile];
    if (s < 0 || s >= S || h >= n_heads || nkv <= 0) return;
    if (d <= 0 || d > ATT_MAX_D || (d & 15) != 0 || bs <= 0) return;
    const int G = n_heads / nkv;
    if (G <= 0) return;
    const int kvh = h / G;
    const int start = tiles[2 * tile + 1];
    const int q0 = qsl[s];
    const int q1 = qsl[s + 1];
    if (start < q0 || start >= q1 || start >= T) return;
    const int nrows = min(ATT_TILE_Q, min(q1, T) - start);

    const int L = att_seq_len(seq_lens, s, M, bs);
    const int pos0 = L - (q1 - q0) + (start - q0);  // position of tile row 0
    const int kmin = att_lo(pos0, window);
    const int kmax = att_hi(pos0 + nrows - 1, L, causal);

    float* qs = smem;                         // [16][d]
    float* kvs = smem + ATT_TILE_Q * d;       // [32][d]
    float* ps = kvs + ATT_TILE_K * d;         // [32][16]

    const int tid = threadIdx.x;
    const int r = tid >> 3;
    const int c8 = tid & 7;
    const int d4 = d >> 2;
    const int d16 = d >> 4;
    const int rot = c8 % d4;  // rotate the dot-product start to spread banks

    for (int i = tid; i < ATT_TILE_Q * d; i += blockDim.x) {
        const int rr = i / d;
        const int dim = i - rr * d;
        qs[i] = rr < nrows ? q[((long long)(start + rr) * n_heads + h) * d + dim] : 0.0f;
    }

    const bool rvalid = r < nrows;
    const int prow = pos0 + r;
    const int rlo = rvalid ? att_lo(prow, window) : 0;
    const int rhi = rvalid ? att_hi(prow, L, causal) : 0;

    float m = TSR_NEG_INF;
    float l = 0.0f;
    float acc[2 * (ATT_MAX_D / 16)];
#pragma unroll
    for (int j = 0; j < 2 * (ATT_MAX_D / 16); ++j) acc[j] = 0.0f;

    const long long tbl = (long long)s * M;

    for (int k0 = kmin; k0 < kmax; k0 += ATT_TILE_K) {
        // A: cache offsets of this chunk's keys (-1: not readable)
        if (tid < ATT_TILE_K) {
            const int k = k0 + tid;
            long long base = -1;
            if (k < kmax) {
                const int blk = k / bs;
                const int bid = block_tables[tbl + blk];
                if (bid >= 0 && bid < num_blocks) {
                    base = (((long long)bid * nkv + kvh) * bs + (k - blk * bs)) * d;
                }
            }
            s_base[tid] = base;
        }
        __syncthreads();  // (1) s_base ready; previous chunk's PV done with kvs/ps

        // B: K tile
        prefill_load_tile<KV>(k_cache, kvs, s_base, d);
        __syncthreads();  // (2)

        // C: scores for row r, keys c8 + 8*i
        float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        {
            const float4* qrow = reinterpret_cast<const float4*>(qs + r * d);
            const float4* k0p = reinterpret_cast<const float4*>(kvs + c8 * d);
            const int kstride4 = 2 * d;  // 8 keys * d floats / 4
            for (int j4 = rot; j4 < d4; ++j4) {
                const float4 qv = qrow[j4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float4 kv = k0p[i * kstride4 + j4];
                    sc[i] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
                }
            }
            for (int j4 = 0; j4 < rot; ++j4) {
                const float4 qv = qrow[j4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float4 kv = k0p[i * kstride4 + j4];
                    sc[i] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
                }
            }
        }
        float cmax = TSR_NEG_INF;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int c = c8 + 8 * i;
            const int k = k0 + c;
            const bool vis = k >= rlo && k < rhi && s_base[c] >= 0;  // rhi == 0 when !rvalid
            sc[i] = vis ? att_score(sc[i], scale, softcap) : TSR_NEG_INF;
            cmax = fmaxf(cmax, sc[i]);
        }
        cmax = fmaxf(cmax, TSR_SHFL_XOR(cmax, 1));
        cmax = fmaxf(cmax, TSR_SHFL_XOR(cmax, 2));
        cmax = fmaxf(cmax, TSR_SHFL_XOR(cmax, 4));
        const float mn = fmaxf(m, cmax);
        float alpha = 1.0f;
        float rs = 0.0f;
        if (mn != TSR_NEG_INF) {
            alpha = expf(m - mn);  // m == -inf -> 0
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                sc[i] = expf(sc[i] - mn);  // invisible -> 0
                rs += sc[i];
            }
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) sc[i] = 0.0f;
        }
        rs += TSR_SHFL_XOR(rs, 1);
        rs += TSR_SHFL_XOR(rs, 2);
        rs += TSR_SHFL_XOR(rs, 4);
        l = l * alpha + rs;
        m = mn;
#pragma unroll
        for (int j = 0; j < 2 * (ATT_MAX_D / 16); ++j) acc[j] *= alpha;
#pragma unroll
        for (int i = 0; i < 4; ++i) ps[(c8 + 8 * i) * ATT_TILE_Q + r] = sc[i];
        __syncthreads();  // (3) K reads done, ps written

        // D: V tile
        prefill_load_tile<KV>(v_cache, kvs, s_base, d);
        __syncthreads();  // (4)

        // E: acc += P V
        const int nk = min(ATT_TILE_K, kmax - k0);
        for (int c = 0; c < nk; ++c) {
            const float pc = ps[c * ATT_TILE_Q + r];
            const float* vrow = kvs + c * d + 2 * c8;
#pragma unroll
            for (int j = 0; j < ATT_MAX_D / 16; ++j) {
                if (j < d16) {
                    const float2 v = *reinterpret_cast<const float2*>(vrow + 16 * j);
                    acc[2 * j] += pc * v.x;
                    acc[2 * j + 1] += pc * v.y;
                }
            }
        }
    }

    if (rvalid) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float* orow = out + ((long long)(start + r) * n_heads + h) * d + 2 * c8;
#pragma unroll
        for (int j = 0; j < ATT_MAX_D / 16; ++j) {
            if (j < d16) {
                *reinterpret_cast<float2*>(orow + 16 * j) =
                    make_float2(acc[2 * j] * inv, acc[2 * j + 1] * inv);
            }
        }
    }
}

#define DEF(SUF, KV)                                                                         \
    extern "C" __global__ void __launch_bounds__(128) paged_attention_prefill_##SUF(         \
        const float* q, const KV* k_cache, const KV* v_cache, const int* qsl,                \
        const int* seq_lens, const int* block_tables, const int* tiles, float* out, int T,   \
        int S, int n_heads, int nkv, int d, int bs, int M, int num_blocks, float scale,      \
        int causal, int window, float softcap) {                                             \
        prefill_impl<KV>(q, k_cache, v_cache, qsl, seq_lens, block_tables, tiles, out, T, S, \
                         n_heads, nkv, d, bs, M, num_blocks, scale, causal, window, softcap); \
    }
TSR_TYPES(DEF)
#undef DEF

// ---------------------------------------------------------------------------
// paged_attention_decode_{KV}: grid (T, nkv * ceil(G/8), num_partitions),
// block 128, smem (H*d + H*partition_tokens) * 4, H = min(G, 8).
//
// Block (t, y, p) handles H query heads of KV head g = y / ceil(G/8) (heads
// g*G + h0 .. of row t, h0 = 8 * (y mod ceil(G/8))) over the keys
// [p*pt, (p+1)*pt) ∩ [lo, hi). Scores: one warp per key, lanes split d in
// pairs, K read once for the block's heads. Softmax: one warp per head. PV:
// thread owns a dim pair and accumulates the block's heads; when d/2 <
// blockDim the keys are split over blockDim/(d/2) thread sets, reduced
// through shared memory. At most 8 heads per block keeps the unrolled
// per-head registers within AMD's 102 scalar registers (16 spilled).

template <typename KV>
TSR_INLINE void decode_pv(const KV* __restrict__ v_cache, const int* __restrict__ block_tables,
                          const float* sc, long long tbl, int kstart, int kend, int kstep,
                          int p0, int pr, int H, int g, int nkv, int bs, int d,
                          int num_blocks, float* acc0, float* acc1) {
    int k = kstart;
    int blk = k / bs;
    int off = k - blk * bs;
    for (; k < kend; k += kstep) {
        const int bid = block_tables[tbl + blk];
        if (bid >= 0 && bid < num_blocks) {
            const float2 v =
                tsr_load2_f32(v_cache, (((long long)bid * nkv + g) * bs + off) * d + 2 * pr);
            const float* w = sc + (long long)(k - p0) * H;
#pragma unroll
            for (int hh = 0; hh < ATT_MAX_G; ++hh) {
                if (hh < H) {
                    const float wk = w[hh];
                    acc0[hh] += wk * v.x;
                    acc1[hh] += wk * v.y;
                }
            }
        }
        off += kstep;
        while (off >= bs) {
            off -= bs;
            ++blk;
        }
    }
}

template <typename KV>
TSR_INLINE void decode_impl(const float* __restrict__ q, const KV* __restrict__ k_cache,
                            const KV* __restrict__ v_cache, const int* __restrict__ qsl,
                            const int* __restrict__ seq_lens, const int* __restrict__ block_tables,
                            float* __restrict__ out, float* __restrict__ part_out,
                            float* __restrict__ part_ml, int T, int S, int n_heads, int nkv,
                            int d, int bs, int M, int num_blocks, float scale, int causal,
                            int window, float softcap, int pt, int P) {
    __shared__ float s_m[ATT_MAX_G];
    __shared__ float s_l[ATT_MAX_G];

    const int t = blockIdx.x;
    const int p = blockIdx.z;
    // Uniform early exits (invalid launch parameters only).
    if (t >= T || nkv <= 0 || d < 2 || (d & 1) || bs <= 0 || pt <= 0) return;
    const int G = n_heads / nkv;
    if (G <= 0) return;
    const int hsplit = (G + ATT_MAX_G - 1) / ATT_MAX_G;  // blocks per KV head
    const int g = blockIdx.y / hsplit;
    const int h0 = (blockIdx.y - g * hsplit) * ATT_MAX_G;
    if (g >= nkv) return;
    const int H = min(ATT_MAX_G, G - h0);  // this block's heads

    const int tid = threadIdx.x;
    const int lane = tid % TSR_WARP;
    const int warp = tid / TSR_WARP;
    const int nwarps = blockDim.x / TSR_WARP;
    const int npairs = d >> 1;

    float* qs = smem;           // [H][d]
    float* sc = smem + H * d;   // [pt][H] (key-major: a key's H weights are contiguous)

    // Key range [a, b) of this block; empty for padding rows.
    const int s = att_find_seq(qsl, S, t);
    const int p0 = p * pt;
    int a = p0;
    int b = p0;
    long long tbl = 0;
    if (s >= 0) {
        const int L = att_seq_len(seq_lens, s, M, bs);
        const int q0 = qsl[s];
        const int pos = L - (qsl[s + 1] - q0) + (t - q0);
        const int lo = att_lo(pos, window);
        const int hi = att_hi(pos, L, causal);
        a = max(lo, p0);
        b = min(hi, p0 + pt);
        if (b < a) b = a;
        tbl = (long long)s * M;
    }

    if (b > a) {
        for (int i = tid; i < H * d; i += blockDim.x) {
            qs[i] = q[((long long)t * n_heads + (long long)g * G + h0) * d + i];
        }
    }
    __syncthreads();

    // Scores: warp per key.
    if (b > a) {
        int k = a + warp;
        int blk = k / bs;
        int off = k - blk * bs;
        for (; k < b; k += nwarps) {
            const int bid = block_tables[tbl + blk];
            const bool valid = bid >= 0 && bid < num_blocks;  // warp-uniform
            float dot[ATT_MAX_G];
#pragma unroll
            for (int hh = 0; hh < ATT_MAX_G; ++hh) dot[hh] = 0.0f;
            if (valid) {
                const long long base = (((long long)bid * nkv + g) * bs + off) * d;
                for (int pr = lane; pr < npairs; pr += TSR_WARP) {
                    const float2 kv = tsr_load2_f32(k_cache, base + 2 * pr);
#pragma unroll
                    for (int hh = 0; hh < ATT_MAX_G; ++hh) {
                        if (hh < H) {
                            const float2 qv = *reinterpret_cast<const float2*>(qs + hh * d + 2 * pr);
                            dot[hh] += qv.x * kv.x + qv.y * kv.y;
                        }
                    }
                }
#pragma unroll
                for (int hh = 0; hh < ATT_MAX_G; ++hh) {
                    if (hh < H) dot[hh] = tsr_warp_sum(dot[hh]);
                }
            }
            if (lane == 0) {
#pragma unroll
                for (int hh = 0; hh < ATT_MAX_G; ++hh) {
                    if (hh < H) {
                        sc[(k - p0) * H + hh] =
                            valid ? att_score(dot[hh], scale, softcap) : TSR_NEG_INF;
                    }
                }
            }
            off += nwarps;
            while (off >= bs) {
                off -= bs;
                ++blk;
            }
        }
    }
    __syncthreads();

    // Softmax within the partition: warp per head; weights overwrite scores.
    for (int hh = warp; hh < H; hh += nwarps) {
        float* col = sc + hh;  // element (k - p0) at col[(k - p0) * H]
        float m = TSR_NEG_INF;
        for (int k = a + lane; k < b; k += TSR_WARP) m = fmaxf(m, col[(k - p0) * H]);
        m = tsr_warp_max(m);
        float l = 0.0f;
        if (m != TSR_NEG_INF) {
            for (int k = a + lane; k < b; k += TSR_WARP) {
                const float e = expf(col[(k - p0) * H] - m);
                col[(k - p0) * H] = e;
                l += e;
            }
        } else {
            for (int k = a + lane; k < b; k += TSR_WARP) col[(k - p0) * H] = 0.0f;
        }
        l = tsr_warp_sum(l);
        if (lane == 0) {
            s_m[hh] = m;
            s_l[hh] = l;
        }
    }
    __syncthreads();

    const long long orow = (long long)t * n_heads + (long long)g * G + h0;  // first head's row
    // PV. Dim pairs are processed in passes of `chunk` pairs (one pass for
    // d <= 2*blockDim); within a pass the keys are split over `nsplit` thread
    // sets whose partial sums are added in shared memory in a fixed order.
    const int chunk = min(npairs, (int)blockDim.x);
    const int nsplit = (int)blockDim.x / chunk;
    const int ks = tid / chunk;
    const int prl = tid - ks * chunk;
    float* red = smem;  // [H][2*chunk], reuses the q region (q is no longer read)
    for (int pbase = 0; pbase < npairs; pbase += chunk) {  // uniform trip count
        const int pr = pbase + prl;
        const bool act = ks < nsplit && pr < npairs;
        float acc0[ATT_MAX_G];
        float acc1[ATT_MAX_G];
#pragma unroll
        for (int hh = 0; hh < ATT_MAX_G; ++hh) {
            acc0[hh] = 0.0f;
            acc1[hh] = 0.0f;
        }
        if (act) {
            decode_pv<KV>(v_cache, block_tables, sc, tbl, a + ks, b, nsplit, p0, pr, H, g, nkv,
                          bs, d, num_blocks, acc0, acc1);
        }
        for (int sp = 0; sp < nsplit; ++sp) {
            if (act && ks == sp) {
                float* dst = red + 2 * prl;
#pragma unroll
                for (int hh = 0; hh < ATT_MAX_G; ++hh) {
                    if (hh < H) {
                        if (sp == 0) {
                            dst[hh * 2 * chunk] = acc0[hh];
                            dst[hh * 2 * chunk + 1] = acc1[hh];
                        } else {
                            dst[hh * 2 * chunk] += acc0[hh];
                            dst[hh * 2 * chunk + 1] += acc1[hh];
                        }
                    }
                }
            }
            __syncthreads();
        }
        const int w2 = 2 * chunk;
        for (int i = tid; i < H * w2; i += blockDim.x) {
            const int hh = i / w2;
            const int dim = 2 * pbase + (i - hh * w2);
            if (dim < d) {
                if (P == 1) {
                    const float l = s_l[hh];
                    out[(orow + hh) * d + dim] = l > 0.0f ? red[i] / l : 0.0f;
                } else {
                    part_out[((orow + hh) * P + p) * d + dim] = red[i];
                }
            }
        }
        __syncthreads();  // red is rewritten by the next pass
    }
    if (P > 1 && tid < H) {
        float* ml = part_ml + ((orow + tid) * P + p) * 2;
        ml[0] = s_m[tid];
        ml[1] = s_l[tid];
    }
}

#define DEF(SUF, KV)                                                                          \
    extern "C" __global__ void __launch_bounds__(128, 4) paged_attention_decode_##SUF(           \
        const float* q, const KV* k_cache, const KV* v_cache, const int* qsl,                 \
        const int* seq_lens, const int* block_tables, float* out, float* part_out,            \
        float* part_ml, int T, int S, int n_heads, int nkv, int d, int bs, int M,             \
        int num_blocks, float scale, int causal, int window, float softcap,                   \
        int partition_tokens, int num_partitions) {                                           \
        decode_impl<KV>(q, k_cache, v_cache, qsl, seq_lens, block_tables, out, part_out,      \
                        part_ml, T, S, n_heads, nkv, d, bs, M, num_blocks, scale, causal,     \
                        window, softcap, partition_tokens, num_partitions);                   \
    }
TSR_TYPES(DEF)
#undef DEF

// ---------------------------------------------------------------------------
// paged_attention_reduce(part_out [T,n,P,d], part_ml [T,n,P,2], out [T,n,d],
//                        T, n_heads, d, num_partitions)
// grid (T, n_heads), block 128.
extern "C" __global__ void __launch_bounds__(128)
    paged_attention_reduce(const float* __restrict__ part_out, const float* __restrict__ part_ml,
                           float* __restrict__ out, int T, int n_heads, int d,
                           int num_partitions) {
    const int t = blockIdx.x;
    const int h = blockIdx.y;
    if (t >= T || h >= n_heads) return;
    const int P = num_partitions;
    const long long row = (long long)t * n_heads + h;
    const float* ml = part_ml + row * P * 2;
    const float* po = part_out + row * P * d;
    float* o = out + row * d;

    float gm = TSR_NEG_INF;
    for (int p = 0; p < P; ++p) gm = fmaxf(gm, ml[2 * p]);
    float gl = 0.0f;
    if (gm != TSR_NEG_INF) {
        for (int p = 0; p < P; ++p) gl += expf(ml[2 * p] - gm) * ml[2 * p + 1];
    }
    if (gm == TSR_NEG_INF || !(gl > 0.0f)) {
        for (int dim = threadIdx.x; dim < d; dim += blockDim.x) o[dim] = 0.0f;
        return;
    }
    const float inv = 1.0f / gl;
    for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
        float acc = 0.0f;
        for (int p = 0; p < P; ++p) {
            const float mp = ml[2 * p];
            if (mp != TSR_NEG_INF) acc += expf(mp - gm) * po[(long long)p * d + dim];
        }
        o[dim] = acc * inv;
    }
}
