// tessera CUDA kernel emulator: the fiber runtime.
//
// Runs our CUDA kernels (kernels/cuda/*.cu, the real sources) on the CPU so
// that their numerics are tested in CI without a GPU.
//
// ---------------------------------------------------------------- build
// All kernel files go into ONE translation unit (a unity build) followed by
// one trampoline per kernel, e.g. kernels_unity.cpp:
//     #include "attention.cu"
//     #include "elementwise.cu"
//     ...
//     TSR_EMU_TRAMPOLINE(paged_attention_decode_f32)
//     TSR_EMU_TRAMPOLINE(silu_mul)
//     ...
// and is built with this file (one step, or -c each then link):
//     g++ -std=c++17 -O2 -fPIC -shared -DTSR_EMULATE
//         -include kernels/cuda/emulate/emulate.h -I kernels/cuda
//         kernels_unity.cpp kernels/cuda/emulate/runtime.cpp -o libtsr_cuda_emu.so
// (-x c++ is needed only when a .cu file is compiled directly; -w or
// -Wno-unknown-pragmas silences "#pragma unroll ignored" under -Wall.)
// No other libraries: only libc (ucontext, mmap) and libstdc++ (std::mutex).
// Do not build with -flto: __syncthreads/__shfl_xor_sync must stay opaque
// calls so the compiler reloads memory other fibers wrote (emulate.h adds a
// compiler memory barrier after them as well). emulate.h turns strict
// aliasing off (#pragma GCC optimize) because the kernels read bf16/float
// storage as unsigned/float2/uint4.
//
// ---------------------------------------------------------------- C API
//   int tsr_emu_launch(void (*trampoline)(void** args),
//                      unsigned gx, unsigned gy, unsigned gz, unsigned block,
//                      unsigned dynamic_smem_bytes, void** args,
//                      char* err, unsigned long errlen);
//   trampoline: a tsr_emu_entry_<kernel> (TSR_EMU_TRAMPOLINE in emulate.h);
//   args[i] points at the i-th argument's value (cuLaunchKernel's
//   kernelParams). Returns 0, or non-zero with a NUL-terminated message in
//   err (at most errlen bytes). Launches are serialised by a mutex (the
//   shared memory and the fibers are process-wide).
//
// ---------------------------------------------------------------- model
// One OS thread. The blocks of a grid run one after another (x fastest, then
// y, then z); a block's threads are `block` fibers (threadIdx.x = 0..block-1,
// y = z = 0), 64 KiB stacks with a guard page, reused across blocks and
// launches, at most 1024. Round-robin: a fiber runs until it exits or blocks
// at a barrier, then the next runnable fiber (in threadIdx order) runs.
//   * __syncthreads: waits until every fiber of the block that has not exited
//     has arrived (exited threads no longer count, as in CUDA).
//   * __shfl_xor_sync (full mask, width TSR_EMU_WARP: 32 like NVIDIA, or 64
//     like AMD's gfx9 wavefronts): the lanes of the fiber's warp
//     (tid / TSR_EMU_WARP; a last partial warp has fewer lanes) deposit their value,
//     warp barrier, read lane ^ laneMask's (own value when that lane does
//     not exist), warp barrier again before the slots are reused.
//   * Errors (the launch returns non-zero, naming kernel, block and fiber
//     states): a lane exits while others of its warp shuffle (or shuffles
//     after a lane of its warp exited); deadlock (no runnable fiber while some
//     have not exited: e.g. __syncthreads in a branch only some threads take,
//     or threads of one warp at a shuffle while others wait at
//     __syncthreads); partial shuffle masks or widths; bad launch dimensions;
//     dynamic shared memory above 256 KiB.
//   * Shared memory: before every block, the first dynamic_smem_bytes of
//     smem[] are filled with NaN bit patterns (0x7fc00000), so that reading
//     dynamic shared memory no thread of this block wrote poisons the
//     results. Static __shared__ variables are function-local statics: they
//     are NOT poisoned and keep the previous block's values.
//
// Not modelled: real concurrency and memory ordering (every write is visible
// to every fiber at its next barrier, and in fact at once: races between
// threads go unnoticed unless the schedule exposes them); warp-synchronous
// code without __syncwarp (lanes of a warp do not run in lockstep here, a
// fiber runs until it blocks); which barrier call site threads wait at (two
// different __syncthreads calls in divergent code count as one barrier);
// global-memory atomics, __syncwarp, other shuffles (not used by the
// kernels); out-of-bounds accesses (use guard bytes / ASan); the exact CUDA
// libm results and FMA contraction (expf/tanhf/... are glibc's, g++ does not
// contract a*b+c into fma without -mfma); __restrict__ violations are only
// as visible as g++'s optimisations make them; shared memory limits other
// than 256 KiB dynamic (48 KiB default without the opt-in attribute is not
// checked), registers, occupancy, __launch_bounds__.

#include "emulate.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

// ---------------------------------------------------------------- globals

#define TSR_EMU_SMEM_BYTES (256u * 1024u)
#define TSR_EMU_MAX_THREADS 1024u
#define TSR_EMU_STACK_BYTES (64u * 1024u)
#define TSR_EMU_POISON 0x7fc00000u

// The dynamic shared memory of attention.cu (`extern float smem[]`).
__attribute__((visibility("hidden"), aligned(16))) float smem[TSR_EMU_SMEM_BYTES / sizeof(float)];

extern "C" {
__attribute__((visibility("hidden"))) tsr_emu_ctx_t* tsr_emu_cur = nullptr;
__attribute__((visibility("hidden"))) const char* tsr_emu_kernel_name = "?";
}

namespace {

enum State : unsigned char { READY, AT_SYNC, AT_WARP, EXITED };

struct Fiber {
    ucontext_t uc;
    tsr_emu_ctx_t ctx;
    State st;
};

std::mutex g_launch_mutex;
std::vector<void*> g_stacks;   // mmapped: guard page + TSR_EMU_STACK_BYTES
std::vector<Fiber> g_fibers;   // sized to the largest block seen

ucontext_t g_main;
void (*g_trampoline)(void**) = nullptr;
void** g_args = nullptr;

unsigned g_n = 0;          // fibers in the block
unsigned g_alive = 0;      // not exited
unsigned g_sync_wait = 0;  // at __syncthreads
unsigned g_cur = 0;        // running fiber
unsigned g_warp_wait[TSR_EMU_MAX_THREADS / TSR_EMU_WARP];
unsigned g_warp_exited[TSR_EMU_MAX_THREADS / TSR_EMU_WARP];
unsigned g_slots[TSR_EMU_MAX_THREADS / TSR_EMU_WARP][TSR_EMU_WARP];
bool g_failed = false;
std::string g_error;

void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char* fmt, ...) {
    if (g_failed) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_failed = true;
    g_error = buf;
}

unsigned warp_lanes(unsigned w) {
    const unsigned first = w * TSR_EMU_WARP;
    return g_n - first < TSR_EMU_WARP ? g_n - first : TSR_EMU_WARP;
}

// Switches from fiber i (blocked or exited) to the next runnable fiber, or
// back to the launcher when there is none or an error was recorded. Returns
// when fiber i is resumed.
void switch_from(unsigned i) {
    Fiber& self = g_fibers[i];
    const bool exited = self.st == EXITED;
    if (!g_failed) {
        for (unsigned k = 1; k <= g_n; ++k) {
            const unsigned j = (i + k) % g_n;
            if (g_fibers[j].st != READY) continue;
            if (j == i) return;
            g_cur = j;
            tsr_emu_cur = &g_fibers[j].ctx;
            if (exited) {
                setcontext(&g_fibers[j].uc);
            } else {
                swapcontext(&self.uc, &g_fibers[j].uc);
            }
            return;  // resumed: the resumer set g_cur / tsr_emu_cur
        }
    }
    if (exited) setcontext(&g_main);
    swapcontext(&self.uc, &g_main);
    // Only reached if the launcher resumed us, which it never does.
}

void fiber_main() {
    const unsigned i = g_cur;
    g_trampoline(g_args);
    Fiber& f = g_fibers[i];
    f.st = EXITED;
    --g_alive;
    const unsigned w = i / TSR_EMU_WARP;
    ++g_warp_exited[w];
    if (g_warp_wait[w] > 0) {
        fail("thread %u (warp %u, lane %u) exited while %u lane(s) of its warp wait in "
             "__shfl_xor_sync",
             i, w, i % TSR_EMU_WARP, g_warp_wait[w]);
    }
    if (g_sync_wait > 0 && g_sync_wait == g_alive) {
        for (unsigned j = 0; j < g_n; ++j) {
            if (g_fibers[j].st == AT_SYNC) g_fibers[j].st = READY;
        }
        g_sync_wait = 0;
    }
    switch_from(i);
}

void* new_stack() {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, TSR_EMU_STACK_BYTES + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, page, PROT_NONE);  // guard: overflow faults instead of corrupting
    return p;
}

const char* state_name(State s) {
    switch (s) {
        case READY: return "runnable";
        case AT_SYNC: return "wait at __syncthreads";
        case AT_WARP: return "wait at __shfl_xor_sync";
        case EXITED: return "exited";
    }
    return "?";
}

// "threads 0-31 wait at __syncthreads; threads 32-63 exited"
std::string describe_fibers() {
    std::string s;
    unsigned a = 0;
    while (a < g_n) {
        unsigned b = a;
        while (b + 1 < g_n && g_fibers[b + 1].st == g_fibers[a].st) ++b;
        char buf[96];
        if (a == b) {
            snprintf(buf, sizeof buf, "%sthread %u %s", s.empty() ? "" : "; ", a,
                     state_name(g_fibers[a].st));
        } else {
            snprintf(buf, sizeof buf, "%sthreads %u-%u %s", s.empty() ? "" : "; ", a, b,
                     state_name(g_fibers[a].st));
        }
        s += buf;
        a = b + 1;
    }
    return s;
}

void poison(void* p, size_t bytes) {
    unsigned char* c = static_cast<unsigned char*>(p);
    const unsigned v = TSR_EMU_POISON;
    size_t i = 0;
    for (; i + 4 <= bytes; i += 4) memcpy(c + i, &v, 4);
    for (; i < bytes; ++i) c[i] = reinterpret_cast<const unsigned char*>(&v)[i & 3];
}

int finish(char* err, unsigned long errlen, int rc) {
    if (err && errlen > 0) {
        snprintf(err, errlen, "%s", rc == 0 ? "" : g_error.c_str());
    }
    return rc;
}

// Fresh context for fiber t (getcontext returns twice: kept out of the loops).
__attribute__((noinline)) void init_fiber(unsigned t, size_t page) {
    Fiber& f = g_fibers[t];
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = static_cast<char*>(g_stacks[t]) + page;
    f.uc.uc_stack.ss_size = TSR_EMU_STACK_BYTES;
    f.uc.uc_link = &g_main;
    makecontext(&f.uc, fiber_main, 0);
}

// Runs one block's fibers until all exited, an error, or a deadlock.
__attribute__((noinline)) void run_block(uint3 bid, dim3 bdim, dim3 gdim) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (unsigned t = 0; t < bdim.x; ++t) {
        Fiber& f = g_fibers[t];
        f.ctx.tid = uint3{t, 0, 0};
        f.ctx.bid = bid;
        f.ctx.bdim = bdim;
        f.ctx.gdim = gdim;
        f.st = READY;
        init_fiber(t, page);
    }
    g_cur = 0;
    tsr_emu_cur = &g_fibers[0].ctx;
    swapcontext(&g_main, &g_fibers[0].uc);
    tsr_emu_cur = nullptr;
}

}  // namespace

// ---------------------------------------------------------------- barriers

extern "C" void tsr_emu_syncthreads(void) {
    const unsigned i = g_cur;
    g_fibers[i].st = AT_SYNC;
    if (++g_sync_wait == g_alive) {
        for (unsigned j = 0; j < g_n; ++j) {
            if (g_fibers[j].st == AT_SYNC) g_fibers[j].st = READY;
        }
        g_sync_wait = 0;
        return;
    }
    switch_from(i);
}

static void warp_barrier(unsigned i, unsigned w) {
    g_fibers[i].st = AT_WARP;
    if (++g_warp_wait[w] == warp_lanes(w)) {
        const unsigned first = w * TSR_EMU_WARP;
        const unsigned n = warp_lanes(w);
        for (unsigned l = 0; l < n; ++l) {
            if (g_fibers[first + l].st == AT_WARP) g_fibers[first + l].st = READY;
        }
        g_warp_wait[w] = 0;
        return;
    }
    switch_from(i);
}

extern "C" unsigned tsr_emu_shfl_xor(unsigned mask, unsigned bits, int lane_mask, int width) {
    const unsigned i = g_cur;
    const unsigned w = i / TSR_EMU_WARP;
    const unsigned lane = i % TSR_EMU_WARP;
    if (mask != 0xffffffffu || width != (int)TSR_EMU_WARP) {
        fail("thread %u: __shfl_xor_sync with mask 0x%08x, width %d: the emulator supports "
             "only the full mask and width %u",
             i, mask, width, TSR_EMU_WARP);
    } else if (g_warp_exited[w] > 0) {
        fail("thread %u (warp %u, lane %u) calls __shfl_xor_sync after %u lane(s) of its warp "
             "exited",
             i, w, lane, g_warp_exited[w]);
    }
    if (g_failed) {
        g_fibers[i].st = AT_WARP;  // never resumed
        switch_from(i);
        return bits;
    }
    g_slots[w][lane] = bits;
    warp_barrier(i, w);
    const unsigned src = lane ^ (unsigned)lane_mask;
    const unsigned r = src < warp_lanes(w) ? g_slots[w][src] : bits;
    warp_barrier(i, w);
    return r;
}

// ---------------------------------------------------------------- launch

extern "C" __attribute__((visibility("default"))) int tsr_emu_launch(
    void (*trampoline)(void** args), unsigned gx, unsigned gy, unsigned gz, unsigned block,
    unsigned dynamic_smem_bytes, void** args, char* err, unsigned long errlen) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    g_failed = false;
    g_error.clear();
    tsr_emu_kernel_name = "?";

    if (trampoline == nullptr) {
        fail("no trampoline");
        return finish(err, errlen, 1);
    }
    if (gx == 0 || gy == 0 || gz == 0 || gx > 0x7fffffffu || gy > 65535u || gz > 65535u ||
        block == 0 || block > TSR_EMU_MAX_THREADS) {
        fail("invalid launch configuration: grid (%u, %u, %u), block %u", gx, gy, gz, block);
        return finish(err, errlen, 1);
    }
    if (dynamic_smem_bytes > TSR_EMU_SMEM_BYTES) {
        fail("dynamic shared memory %u bytes exceeds the emulator's %u", dynamic_smem_bytes,
             TSR_EMU_SMEM_BYTES);
        return finish(err, errlen, 1);
    }
    while (g_stacks.size() < block) {
        void* s = new_stack();
        if (s == nullptr) {
            fail("cannot allocate a fiber stack");
            return finish(err, errlen, 1);
        }
        g_stacks.push_back(s);
    }
    if (g_fibers.size() < block) g_fibers.resize(block);

    g_trampoline = trampoline;
    g_args = args;
    g_n = block;

    for (unsigned z = 0; z < gz; ++z) {
        for (unsigned y = 0; y < gy; ++y) {
            for (unsigned x = 0; x < gx; ++x) {
                poison(smem, dynamic_smem_bytes);
                g_alive = block;
                g_sync_wait = 0;
                for (unsigned w = 0; w < (block + TSR_EMU_WARP - 1) / TSR_EMU_WARP; ++w) {
                    g_warp_wait[w] = 0;
                    g_warp_exited[w] = 0;
                }
                run_block(uint3{x, y, z}, dim3{block, 1, 1}, dim3{gx, gy, gz});

                if (!g_failed && g_alive > 0) {
                    fail("deadlock: no thread can progress (%u of %u not exited): %s", g_alive,
                         block, describe_fibers().c_str());
                }
                if (g_failed) {
                    char buf[160];
                    snprintf(buf, sizeof buf,
                             "%s, grid (%u, %u, %u), block %u, dynamic smem %u: block (%u, %u, "
                             "%u): ",
                             tsr_emu_kernel_name, gx, gy, gz, block, dynamic_smem_bytes, x, y,
                             z);
                    g_error = buf + g_error;
                    return finish(err, errlen, 1);
                }
            }
        }
    }
    return finish(err, errlen, 0);
}
