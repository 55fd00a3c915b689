// Self test of the CUDA emulator: runs the real kernels through the fiber
// runtime and compares them with plain double-precision loops; checks the
// runtime's error detection with a few deliberately broken kernels.
// Build and run: kernels/cuda/emulate/build_selftest.sh [OUTDIR]
//
// The program is compiled with -include emulate.h and linked with the unity
// kernel translation unit and runtime.cpp; it also dlopen()s the shared
// library built exactly like backends/cuda/tests/emulated.rs builds it and
// runs kernels through that (argv[1]: its path).

#include "compat.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

typedef void (*Entry)(void**);
typedef int (*LaunchFn)(Entry, unsigned, unsigned, unsigned, unsigned, unsigned, void**, char*,
                        unsigned long);

#define ENTRY(n) extern "C" void tsr_emu_entry_##n(void**);
ENTRY(rms_norm_f32)
ENTRY(rms_norm_bf16)
ENTRY(silu_mul)
ENTRY(argmax)
ENTRY(gemv_f32)
ENTRY(gemv_bf16)
ENTRY(kv_write_f32)
ENTRY(kv_write_bf16)
ENTRY(attention_tiles)
ENTRY(paged_attention_prefill_f32)
ENTRY(paged_attention_prefill_bf16)
ENTRY(paged_attention_decode_f32)
ENTRY(paged_attention_decode_bf16)
ENTRY(paged_attention_reduce)
#undef ENTRY

static int g_fail = 0;
// Launcher and the entries used by test_attention besides prefill/decode:
// those of the linked copy, or of the dlopen()ed library.
static LaunchFn g_launch = tsr_emu_launch;
static Entry g_tiles = tsr_emu_entry_attention_tiles;
static Entry g_reduce = tsr_emu_entry_paged_attention_reduce;

template <typename... A>
static int launch(Entry e, dim3 g, unsigned block, unsigned smem_bytes, std::string* err_out,
                  A... a) {
    std::tuple<A...> t(a...);
    void* args[sizeof...(A) + 1];
    std::apply(
        [&](auto&... x) {
            int i = 0;
            ((args[i++] = (void*)&x), ...);
        },
        t);
    char err[1024];
    const int rc = g_launch(e, g.x, g.y, g.z, block, smem_bytes, args, err, sizeof err);
    if (err_out) *err_out = err;
    if (rc && !err_out) {
        printf("  launch error: %s\n", err);
        ++g_fail;
    }
    return rc;
}

// ----------------------------------------------------------------- helpers

static unsigned long long g_rng = 0x9e3779b97f4a7c15ull;
static float urand() {  // [-1, 1)
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}
static unsigned short to_bf16(float f) {  // RNE, as compat.h
    unsigned u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
static float from_bf16(unsigned short b) {
    unsigned u = (unsigned)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
template <typename T>
static T conv(float f);
template <>
float conv<float>(float f) {
    return f;
}
template <>
unsigned short conv<unsigned short>(float f) {
    return to_bf16(f);
}
static double val(float f) { return f; }
static double val(unsigned short b) { return from_bf16(b); }

static void check(const char* what, const std::vector<float>& got, const std::vector<double>& ref,
                  double tol = 1e-4) {
    double worst = 0;
    size_t at = 0;
    bool nan = false;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double e = std::fabs((double)got[i] - ref[i]);
        if (!(e == e)) nan = true;
        if (!(e <= worst)) {
            worst = e;
            at = i;
        }
    }
    const bool ok = !nan && worst < tol;
    printf("  %-58s %s  max abs err %.3g%s\n", what, ok ? "ok  " : "FAIL", worst,
           nan ? " (NaN)" : "");
    if (!ok) {
        printf("    first worst at %zu: got %.9g, expected %.9g\n", at, (double)got[at], ref[at]);
        ++g_fail;
    }
}

typedef std::chrono::steady_clock Clock;
static double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ----------------------------------------------------------------- simple kernels

template <typename W>
static void test_rms_norm(Entry e, const char* name) {
    const int T = 3, H = 300;
    const float eps = 1e-5f;
    std::vector<float> x(T * H), out(T * H, 0.0f);
    std::vector<W> w(H);
    for (auto& v : x) v = urand() * 3.0f;
    for (auto& v : w) v = conv<W>(1.0f + 0.5f * urand());
    launch(e, dim3{(unsigned)T, 1, 1}, 256, 0, nullptr, (const float*)x.data(), (const W*)w.data(),
           out.data(), T, H, eps);
    std::vector<double> ref(T * H);
    for (int t = 0; t < T; ++t) {
        double ss = 0;
        for (int j = 0; j < H; ++j) ss += (double)x[t * H + j] * x[t * H + j];
        const double inv = 1.0 / std::sqrt(ss / H + eps);
        for (int j = 0; j < H; ++j) ref[t * H + j] = x[t * H + j] * inv * val(w[j]);
    }
    check(name, out, ref);
}

static void test_silu_mul() {
    const int n = 1000;
    std::vector<float> g(n), u(n), out(n + 4, 12345.0f);
    for (auto& v : g) v = urand() * 8.0f;
    for (auto& v : u) v = urand() * 2.0f;
    launch(tsr_emu_entry_silu_mul, dim3{(n + 255) / 256, 1, 1}, 256, 0, nullptr,
           (const float*)g.data(), (const float*)u.data(), out.data(), n);
    std::vector<double> ref(n + 4, 12345.0);
    for (int i = 0; i < n; ++i) ref[i] = g[i] / (1.0 + std::exp(-(double)g[i])) * u[i];
    check("silu_mul (1000, 4 guard elements untouched)", out, ref);
}

static void test_argmax() {
    const int S = 4, V = 1000;
    std::vector<float> x(S * V);
    for (auto& v : x) v = urand();
    // row 1: tie between 700 and 123 -> 123; row 2: all -inf -> 0; row 3: NaNs ignored
    x[1 * V + 700] = 5.0f;
    x[1 * V + 123] = 5.0f;
    for (int i = 0; i < V; ++i) x[2 * V + i] = -INFINITY;
    x[3 * V + 10] = NAN;
    x[3 * V + 999] = 3.0f;
    std::vector<int> out(S, -7);
    launch(tsr_emu_entry_argmax, dim3{(unsigned)S, 1, 1}, 512, 0, nullptr, (const float*)x.data(),
           out.data(), S, V);
    std::vector<float> got(S);
    std::vector<double> ref(S);
    for (int s = 0; s < S; ++s) {
        int bi = 0;
        float bv = -INFINITY;
        bool any = false;
        for (int i = 0; i < V; ++i) {
            const float v = x[s * V + i];
            if (v > bv) {
                bv = v;
                bi = i;
                any = true;
            }
        }
        ref[s] = any ? bi : 0;
        got[s] = (float)out[s];
    }
    check("argmax (4 x 1000: tie -> lowest index, all -inf, NaN)", got, ref, 0.5);
}

template <typename W>
static void test_gemv(Entry e, const char* name) {
    const int T = 3, N = 10, K = 264 * (sizeof(W) == 2 ? 2 : 1);  // nvec = 66: main loop + tail
    std::vector<W> w(N * K);
    std::vector<float> x(T * K), out(T * N, NAN);
    for (auto& v : w) v = conv<W>(urand());
    for (auto& v : x) v = urand();
    launch(e, dim3{(N + 3) / 4, 1, 1}, 128, 0, nullptr, (const W*)w.data(), (const float*)x.data(),
           out.data(), T, N, K);
    std::vector<double> ref(T * N);
    for (int t = 0; t < T; ++t)
        for (int n = 0; n < N; ++n) {
            double s = 0;
            for (int k = 0; k < K; ++k) s += (double)x[t * K + k] * val(w[n * K + k]);
            ref[t * N + n] = s;
        }
    check(name, out, ref);
}

template <typename KV>
static void test_kv_write(Entry e, const char* name) {
    const int T = 5, nkv = 2, bs = 4, d = 8, nb = 3;
    std::vector<KV> cache(nb * nkv * bs * d, conv<KV>(-9.0f));
    std::vector<float> nk(T * nkv * d);
    for (auto& v : nk) v = urand();
    const int slots[T] = {0, 7, -1, 12, 11};  // 12 = nb*bs: out of range, skipped
    launch(e, dim3{(unsigned)T, (unsigned)nkv, 1}, 128, 0, nullptr, cache.data(),
           (const float*)nk.data(), slots, T, nkv, bs, d, nb);
    std::vector<double> ref(cache.size(), val(conv<KV>(-9.0f)));
    for (int t = 0; t < T; ++t) {
        const int sl = slots[t];
        if (sl < 0 || sl >= nb * bs) continue;
        for (int h = 0; h < nkv; ++h)
            for (int i = 0; i < d; ++i)
                ref[(((sl / bs) * nkv + h) * bs + sl % bs) * d + i] =
                    val(conv<KV>(nk[(t * nkv + h) * d + i]));
    }
    std::vector<float> got(cache.size());
    for (size_t i = 0; i < cache.size(); ++i) got[i] = (float)val(cache[i]);
    check(name, got, ref, 1e-12);
}

// ----------------------------------------------------------------- attention

struct AttCase {
    const char* name;
    int T, S, n, nkv, d, bs, M, num_blocks;
    std::vector<int> qsl, seq_lens, block_tables;
    int causal, window;
    float softcap;
};

template <typename KV>
static std::vector<double> att_reference(const AttCase& c, const std::vector<float>& q,
                                         const std::vector<KV>& kc, const std::vector<KV>& vc,
                                         float scale) {
    std::vector<double> out((size_t)c.T * c.n * c.d, 0.0);
    const int G = c.n / c.nkv;
    for (int t = 0; t < c.T; ++t) {
        int s = -1;
        for (int i = 0; i < c.S; ++i)
            if (t >= c.qsl[i] && t < c.qsl[i + 1]) s = i;
        if (s < 0) continue;
        const int L = std::max(0, std::min(c.seq_lens[s], c.M * c.bs));
        const int qlen = c.qsl[s + 1] - c.qsl[s];
        const int p = L - qlen + (t - c.qsl[s]);
        const int hi = c.causal ? std::min(p + 1, L) : L;
        const int lo = c.window > 0 ? std::max(0, p + 1 - c.window) : 0;
        for (int h = 0; h < c.n; ++h) {
            const int g = h / G;
            std::vector<double> sc;
            std::vector<long> base;
            for (int k = lo; k < hi; ++k) {
                const int bid = c.block_tables[s * c.M + k / c.bs];
                if (bid < 0 || bid >= c.num_blocks) continue;
                const long b = (((long)bid * c.nkv + g) * c.bs + k % c.bs) * c.d;
                double dot = 0;
                for (int i = 0; i < c.d; ++i)
                    dot += (double)q[((long)t * c.n + h) * c.d + i] * val(kc[b + i]);
                double x = scale * dot;
                if (c.softcap > 0) x = c.softcap * std::tanh(x / c.softcap);
                sc.push_back(x);
                base.push_back(b);
            }
            if (sc.empty()) continue;
            const double m = *std::max_element(sc.begin(), sc.end());
            double l = 0;
            for (auto& x : sc) l += (x = std::exp(x - m));
            for (int i = 0; i < c.d; ++i) {
                double a = 0;
                for (size_t j = 0; j < sc.size(); ++j) a += sc[j] * val(vc[base[j] + i]);
                out[((size_t)t * c.n + h) * c.d + i] = a / l;
            }
        }
    }
    return out;
}

template <typename KV>
static void test_attention(const AttCase& c, Entry prefill, Entry decode, const char* kvname) {
    const float scale = 1.0f / std::sqrt((float)c.d);
    std::vector<float> q((size_t)c.T * c.n * c.d);
    for (auto& v : q) v = urand() * 2.0f;
    std::vector<KV> kc((size_t)c.num_blocks * c.nkv * c.bs * c.d), vc(kc.size());
    for (auto& v : kc) v = conv<KV>(urand() * 2.0f);
    for (auto& v : vc) v = conv<KV>(urand());
    const std::vector<double> ref = att_reference(c, q, kc, vc, scale);
    const int G = c.n / c.nkv;
    char what[160];

    // prefill: tiles, then the tiles x heads grid
    const int max_tiles = (c.T + 15) / 16 + c.S;
    std::vector<int> tiles(2 * max_tiles, 777);
    launch(g_tiles, dim3{1, 1, 1}, 32, 0, nullptr,
           (const int*)c.qsl.data(), c.S, tiles.data(), max_tiles);
    {
        // expected tile list
        std::vector<int> et;
        for (int s = 0; s < c.S; ++s)
            for (int st = c.qsl[s]; st < c.qsl[s + 1]; st += 16) {
                et.push_back(s);
                et.push_back(st);
            }
        while ((int)et.size() < 2 * max_tiles) {
            et.push_back(-1);
            et.push_back(0);
        }
        std::vector<float> got(tiles.begin(), tiles.end());
        std::vector<double> r(et.begin(), et.end());
        snprintf(what, sizeof what, "attention_tiles [%s]", c.name);
        check(what, got, r, 0.5);
    }
    {
        std::vector<float> out(ref.size(), 0.0f);
        const unsigned smem = (16 * c.d + 32 * c.d + 16 * 32) * 4;
        const auto t0 = Clock::now();
        launch(prefill, dim3{(unsigned)max_tiles, (unsigned)c.n, 1}, 128, smem, nullptr,
               (const float*)q.data(), (const KV*)kc.data(), (const KV*)vc.data(),
               (const int*)c.qsl.data(), (const int*)c.seq_lens.data(),
               (const int*)c.block_tables.data(), (const int*)tiles.data(), out.data(), c.T, c.S,
               c.n, c.nkv, c.d, c.bs, c.M, c.num_blocks, scale, c.causal, c.window, c.softcap);
        snprintf(what, sizeof what, "prefill_%s [%s] (%.0f ms)", kvname, c.name, ms_since(t0));
        check(what, out, ref);
    }
    // decode: one partition, two, and 8-token partitions (+ reduce)
    int maxL = 1;
    for (int s = 0; s < c.S; ++s) maxL = std::max(maxL, std::min(c.seq_lens[s], c.M * c.bs));
    const int pts[3] = {256, (maxL + 1) / 2, 8};
    for (int pt : pts) {
        const int P = (maxL + pt - 1) / pt;
        std::vector<float> out(ref.size(), NAN);
        std::vector<float> part_out((size_t)c.T * c.n * P * c.d, NAN);
        std::vector<float> part_ml((size_t)c.T * c.n * P * 2, NAN);
        const unsigned smem = (G * c.d + G * pt) * 4;
        const auto t0 = Clock::now();
        launch(decode, dim3{(unsigned)c.T, (unsigned)c.nkv, (unsigned)P}, 128, smem, nullptr,
               (const float*)q.data(), (const KV*)kc.data(), (const KV*)vc.data(),
               (const int*)c.qsl.data(), (const int*)c.seq_lens.data(),
               (const int*)c.block_tables.data(), out.data(), part_out.data(), part_ml.data(),
               c.T, c.S, c.n, c.nkv, c.d, c.bs, c.M, c.num_blocks, scale, c.causal, c.window,
               c.softcap, pt, P);
        if (P > 1) {
            launch(g_reduce, dim3{(unsigned)c.T, (unsigned)c.n, 1},
                   128, 0, nullptr, (const float*)part_out.data(), (const float*)part_ml.data(),
                   out.data(), c.T, c.n, c.d, P);
        }
        snprintf(what, sizeof what, "decode_%s pt=%d P=%d%s [%s] (%.0f ms)", kvname, pt, P,
                 P > 1 ? " + reduce" : "", c.name, ms_since(t0));
        check(what, out, ref);
    }
}

static std::vector<AttCase> att_cases() {
    std::vector<AttCase> v;
    // one sequence, 5 rows, seq_len 5 (a fresh prompt)
    v.push_back({"T=5 S=1 L=5 causal", 5, 1, 4, 2, 64, 16, 1, 3, {0, 5}, {5}, {2}, 1, 0, 0.0f});
    // two sequences with different q_len (3 and 1) after a cached prefix, a
    // padding row (t = 4), blocks out of order
    v.push_back({"T=5 S=2 q=3,1 L=20,37 pad causal", 5, 2, 4, 2, 64, 16, 3, 6,
                 {0, 3, 4},
                 {20, 37},
                 {4, 1, 5, 0, 3, 2},
                 1, 0, 0.0f});
    v.push_back({"same, window 7 softcap 30", 5, 2, 4, 2, 64, 16, 3, 6,
                 {0, 3, 4},
                 {20, 37},
                 {4, 1, 5, 0, 3, 2},
                 1, 7, 30.0f});
    // non-causal, G = 4, d = 128, an invisible block (-1) and one out of range
    v.push_back({"non-causal G=4 d=128 bad blocks", 6, 2, 8, 2, 128, 16, 3, 5,
                 {0, 2, 6},
                 {40, 19},
                 {3, -1, 0, 2, 4, 9},
                 0, 0, 0.0f});
    // 20 rows of one sequence (two prefill tiles), d = 256, MHA (G = 1)
    v.push_back({"T=20 S=1 L=45 d=256 G=1", 20, 1, 2, 2, 256, 16, 3, 3, {0, 20}, {45}, {1, 2, 0},
                 1, 0, 0.0f});
    return v;
}

// ----------------------------------------------------------------- runtime checks

extern float smem[];

static __global__ void k_poison(float* out) {
    if (threadIdx.x == 0) out[blockIdx.x] = smem[3];  // never written: NaN
}
static __global__ void k_divergent_sync(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 40) {
        __syncthreads();
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    out[threadIdx.x] = v;
}
static __global__ void k_exit_in_shuffle(float* out) {
    if (threadIdx.x == 37) return;
    out[threadIdx.x] = tsr_warp_sum(1.0f);
}
// Exited threads no longer count at __syncthreads; sum over threads 0..63.
static __global__ void k_exit_then_sync(float* out) {
    __shared__ float red[2];
    if (threadIdx.x >= 64) return;
    const float s = tsr_warp_sum((float)threadIdx.x);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = s;
    __syncthreads();
    out[threadIdx.x] = red[0] + red[1] + (float)(blockIdx.x + 10 * blockIdx.y + 100 * blockIdx.z) +
                       1000.0f * (float)(gridDim.x * gridDim.y * gridDim.z);
}
TSR_EMU_TRAMPOLINE(k_poison)
TSR_EMU_TRAMPOLINE(k_divergent_sync)
TSR_EMU_TRAMPOLINE(k_exit_in_shuffle)
TSR_EMU_TRAMPOLINE(k_exit_then_sync)

static void expect_error(const char* what, int rc, const std::string& err, const char* needle) {
    const bool ok = rc != 0 && err.find(needle) != std::string::npos;
    printf("  %-58s %s\n    -> %s\n", what, ok ? "ok  " : "FAIL", err.c_str());
    if (!ok) ++g_fail;
}

static void test_runtime() {
    std::vector<float> out(1024, 0.0f);
    std::string err;
    int rc = launch(tsr_emu_entry_k_poison, dim3{2, 1, 1}, 32, 64, nullptr, out.data());
    {
        const bool ok = rc == 0 && std::isnan(out[0]) && std::isnan(out[1]);
        printf("  %-58s %s\n", "unwritten dynamic smem reads NaN", ok ? "ok  " : "FAIL");
        if (!ok) ++g_fail;
    }
    rc = launch(tsr_emu_entry_k_divergent_sync, dim3{1, 2, 1}, 64, 0, &err, out.data());
    expect_error("divergent __syncthreads / shuffle -> deadlock", rc, err, "deadlock");
    rc = launch(tsr_emu_entry_k_exit_in_shuffle, dim3{1, 1, 1}, 64, 0, &err, out.data());
    expect_error("lane exits while its warp shuffles -> error", rc, err, "exited");
    rc = launch(tsr_emu_entry_k_exit_then_sync, dim3{2, 3, 2}, 96, 0, &err, out.data());
    {
        // every launch overwrote out[0..64) with the last block's (1, 2, 1) values
        bool ok = rc == 0;
        for (int t = 0; t < 64; ++t) ok = ok && out[t] == 2016.0f + 1.0f + 20.0f + 100.0f + 12000.0f;
        printf("  %-58s %s%s%s\n", "exits do not count at __syncthreads; block ids", ok ? "ok  " : "FAIL",
               rc ? " " : "", rc ? err.c_str() : "");
        if (!ok) ++g_fail;
    }
    rc = launch(tsr_emu_entry_k_poison, dim3{1, 1, 1}, 1025, 0, &err, out.data());
    expect_error("block of 1025 threads -> error", rc, err, "invalid launch");
    rc = launch(tsr_emu_entry_k_poison, dim3{1, 1, 1}, 32, 256 * 1024 + 4, &err, out.data());
    expect_error("dynamic smem > 256 KiB -> error", rc, err, "exceeds");
    // after errors, the runtime still works (stacks reused)
    rc = launch(tsr_emu_entry_k_exit_then_sync, dim3{1, 1, 1}, 1024, 0, &err, out.data());
    {
        bool ok = rc == 0 && out[0] == 2016.0f + 1000.0f;
        printf("  %-58s %s %s\n", "1024-thread block after errors", ok ? "ok  " : "FAIL",
               rc ? err.c_str() : "");
        if (!ok) ++g_fail;
    }
}

// ----------------------------------------------------------------- main

int main(int argc, char** argv) {
    const auto t0 = Clock::now();
    printf("runtime:\n");
    test_runtime();
    printf("kernels (linked):\n");
    test_rms_norm<float>(tsr_emu_entry_rms_norm_f32, "rms_norm_f32 (3 x 300)");
    test_rms_norm<unsigned short>(tsr_emu_entry_rms_norm_bf16, "rms_norm_bf16 (3 x 300)");
    test_silu_mul();
    test_argmax();
    test_gemv<float>(tsr_emu_entry_gemv_f32, "gemv_f32 (T=3, N=10, K=264)");
    test_gemv<unsigned short>(tsr_emu_entry_gemv_bf16, "gemv_bf16 (T=3, N=10, K=528)");
    test_kv_write<float>(tsr_emu_entry_kv_write_f32, "kv_write_f32 (skipped slots)");
    test_kv_write<unsigned short>(tsr_emu_entry_kv_write_bf16, "kv_write_bf16 (skipped slots)");
    for (const AttCase& c : att_cases()) {
        test_attention<float>(c, tsr_emu_entry_paged_attention_prefill_f32,
                              tsr_emu_entry_paged_attention_decode_f32, "f32");
        test_attention<unsigned short>(c, tsr_emu_entry_paged_attention_prefill_bf16,
                                       tsr_emu_entry_paged_attention_decode_bf16, "bf16");
    }
    if (argc > 1) {
        printf("kernels (dlopen %s):\n", argv[1]);
        void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            printf("  dlopen failed: %s\n", dlerror());
            ++g_fail;
        } else {
            g_launch = (LaunchFn)dlsym(h, "tsr_emu_launch");
            Entry rms = (Entry)dlsym(h, "tsr_emu_entry_rms_norm_f32");
            Entry gemv = (Entry)dlsym(h, "tsr_emu_entry_gemv_bf16");
            Entry pre = (Entry)dlsym(h, "tsr_emu_entry_paged_attention_prefill_f32");
            Entry dec = (Entry)dlsym(h, "tsr_emu_entry_paged_attention_decode_f32");
            g_tiles = (Entry)dlsym(h, "tsr_emu_entry_attention_tiles");
            g_reduce = (Entry)dlsym(h, "tsr_emu_entry_paged_attention_reduce");
            if (!g_launch || !rms || !gemv || !pre || !dec || !g_tiles || !g_reduce) {
                printf("  missing symbols\n");
                ++g_fail;
            } else {
                test_rms_norm<float>(rms, "rms_norm_f32 via the .so");
                test_gemv<unsigned short>(gemv, "gemv_bf16 via the .so");
                test_attention<float>(att_cases()[1], pre, dec, "f32 .so");
            }
            g_launch = tsr_emu_launch;
        }
    }
    printf("%s: %d failure(s), %.1f s\n", g_fail ? "FAILED" : "PASSED", g_fail,
           ms_since(t0) / 1000.0);
    return g_fail ? 1 : 0;
}
