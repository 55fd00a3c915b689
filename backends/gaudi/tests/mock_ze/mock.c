/* A fake Level Zero loader (libze_loader.so.1) for tests/level_zero_mock.rs.
 *
 * A test double: it checks how tessera's Level Zero runtime
 * (src/level_zero/) calls the API against the rules ze_api.h states, on
 * machines with no Intel GPU or Gaudi. It runs no SPIR-V: "device memory" is
 * host memory, and the few kernels the test launches are implemented here by
 * name (`kernels` below).
 *
 * It runs work as late as a device may: appended commands wait in a queue
 * until the host waits on the event a command signals. So what the host must
 * not do shows up, as a wrong result or as a bug: reading a download before
 * the wait, freeing memory or destroying a kernel that queued work uses,
 * waiting on an event nothing signals (a hang on hardware), two commands with
 * no barrier between them (Level Zero orders only when commands start), a
 * wrong stype, a parent destroyed before its children, a leak.
 *
 * It reports by appending a line per event to the file named by
 * MOCK_ZE_REPORT ("context created", "module spirv", "launch scale ...",
 * "BUG ..."); bugs also go to stderr as "MOCK BUG: ...". It models one
 * device, context, list, event and module at a time, used from one thread.
 */
#include <level_zero/ze_api.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MEM_TOTAL ((size_t)64 << 20) /* both memory ordinals together */
#define MAX_ALLOC ((size_t)32 << 20)
#define MAX_LOCAL 65536
#define COMPUTE_GROUP 1 /* group 0 only copies */
#define FILL_PATTERN_MAX 4
/* Our "native binary": this, then the module's SPIR-V. */
#define NATIVE "MOCK-NATIVE:"
#define NATIVE_LEN (sizeof NATIVE - 1)

__attribute__((format(printf, 2, 0))) static void vreport(int is_bug, const char *fmt, va_list ap) {
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    if (is_bug) fprintf(stderr, "MOCK BUG: %s\n", line);
    const char *path = getenv("MOCK_ZE_REPORT");
    FILE *f = path ? fopen(path, "a") : NULL; /* opened per line: nothing is lost in a buffer */
    if (f) {
        fprintf(f, "%s%s\n", is_bug ? "BUG " : "", line);
        fclose(f);
    }
}
__attribute__((format(printf, 1, 2))) static void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(0, fmt, ap);
    va_end(ap);
}
__attribute__((format(printf, 1, 2))) static void bug(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(1, fmt, ap);
    va_end(ap);
}
#define EXPECT(cond, ...) do { if (!(cond)) bug(__VA_ARGS__); } while (0)

/* Handles are the addresses of these. */
static struct { char driver, device, context, list, pool, event, log; } h;
static struct { int context, list, pool, event, logs, kernels, allocs; } alive;
#define IS(handle, name) ((void *)(handle) == (void *)&h.name && alive.name)

/* The kernels: parameters are 'p' pointer, 'i' int, 'f' float, 'l' __local. */
enum { SCALE, BLOCK_SUM };
static const struct { const char *name, *params; } kernels[] = {
    [SCALE] = {"scale", "ppif"},         /* dst[i] = src[i] * f, i < n */
    [BLOCK_SUM] = {"block_sum", "ppil"}, /* out[group] = sum of its items of in, i < n */
};
#define MAX_PARAMS 4
typedef struct {
    int alive, which;
    uint32_t group;
    unsigned set; /* bit i: argument i was set */
    uint64_t args[MAX_PARAMS];
    size_t sizes[MAX_PARAMS];
} kernel_t;
static kernel_t kernel_objects[8];

static struct { int alive; unsigned char *spirv; size_t size; } module;
static const char *build_log = "";

static struct { unsigned char *p; size_t n; } allocs[64];
static size_t used;

typedef enum { BARRIER, COPY, FILL, LAUNCH } kind_t;
static const char *kind_names[] = {"barrier", "copy", "fill", "launch"};
typedef struct {
    kind_t kind;
    unsigned char *dst;
    const unsigned char *src; /* COPY: the source; FILL: the pattern, read when run */
    size_t n, pattern;
    const kernel_t *kernel;
    int which;
    uint64_t args[MAX_PARAMS]; /* the arguments when appended, as a driver copies them */
    size_t local;
    uint32_t groups, group;
} cmd_t;
static cmd_t queue[256];
static size_t queued;
/* RESET, or a queued command (the first `signal_end`) will signal, or SIGNALLED. */
static enum { RESET, SIGNAL_QUEUED, SIGNALLED } event_state;
static size_t signal_end;

/* 1 when [p, p + n) lies in one allocation; 0 when p is in none (host memory). */
static int device_range(const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < sizeof allocs / sizeof *allocs; i++)
        if (allocs[i].p && c >= allocs[i].p && c < allocs[i].p + allocs[i].n) {
            EXPECT(n <= (size_t)(allocs[i].p + allocs[i].n - c), "%zu bytes at %p run past the end of an allocation", n, p);
            return 1;
        }
    return 0;
}

static int overlaps(const void *a, size_t an, const void *b, size_t bn) {
    return (const char *)a < (const char *)b + bn && (const char *)b < (const char *)a + an;
}

/* Whether queued command c reads or writes [p, p + n). */
static int uses(const cmd_t *c, const void *p, size_t n) {
    if (c->kind == COPY && overlaps(c->src, c->n, p, n)) return 1;
    if ((c->kind == COPY || c->kind == FILL) && overlaps(c->dst, c->n, p, n)) return 1;
    if (c->kind == LAUNCH)
        for (int i = 0; kernels[c->which].params[i]; i++)
            if (kernels[c->which].params[i] == 'p' && overlaps((void *)(uintptr_t)c->args[i], 1, p, n)) return 1;
    return 0;
}

static void run(const cmd_t *c) {
    int32_t n;
    float f;
    switch (c->kind) {
    case BARRIER:
        break;
    case COPY:
        memcpy(c->dst, c->src, c->n);
        break;
    case FILL:
        for (size_t i = 0; i < c->n; i++) c->dst[i] = c->src[i % c->pattern];
        break;
    case LAUNCH: {
        float *out = (float *)(uintptr_t)c->args[0];
        const float *in = (const float *)(uintptr_t)c->args[1];
        memcpy(&n, &c->args[2], 4);
        if (c->which == SCALE) {
            memcpy(&f, &c->args[3], 4);
            for (int64_t i = 0; i < n && i < (int64_t)c->groups * c->group; i++) out[i] = in[i] * f;
        } else {
            EXPECT(c->local >= c->group * sizeof(float), "block_sum with %zu bytes of __local memory for %u work-items", c->local, c->group);
            for (uint32_t g = 0; g < c->groups; g++) {
                float sum = 0;
                for (int64_t i = (int64_t)g * c->group; i < (int64_t)(g + 1) * c->group && i < n; i++) sum += in[i];
                out[g] = sum;
            }
        }
    }
    }
}

static ze_result_t append(ze_command_list_handle_t list, cmd_t c, ze_event_handle_t signal, uint32_t waits) {
    EXPECT(IS(list, list), "%s appended to an unknown command list", kind_names[c.kind]);
    EXPECT(waits == 0, "%s waits on events (the mock models none)", kind_names[c.kind]);
    if (c.kind != BARRIER && queued && queue[queued - 1].kind != BARRIER)
        bug("%s appended right after a %s, with no barrier: they may run at once", kind_names[c.kind], kind_names[queue[queued - 1].kind]);
    if (queued == sizeof queue / sizeof *queue) {
        bug("more than %zu commands queued without a host wait", queued);
        return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
    }
    queue[queued++] = c;
    if (signal) {
        EXPECT(IS(signal, event), "a command signals an unknown event");
        EXPECT(event_state == RESET, "a command signals an event not reset since it was last signalled");
        event_state = SIGNAL_QUEUED;
        signal_end = queued;
    }
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeInit(ze_init_flags_t flags) { return ZE_RESULT_SUCCESS; }

ze_result_t zeDriverGet(uint32_t *count, ze_driver_handle_t *drivers) {
    if (*count && drivers) drivers[0] = (ze_driver_handle_t)&h.driver;
    *count = 1;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeDriverGetProperties(ze_driver_handle_t driver, ze_driver_properties_t *p) {
    EXPECT(driver == (void *)&h.driver, "zeDriverGetProperties of an unknown driver");
    EXPECT(p->stype == ZE_STRUCTURE_TYPE_DRIVER_PROPERTIES, "driver properties with stype %#x", p->stype);
    p->driverVersion = 0x01036f4e;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeDeviceGet(ze_driver_handle_t driver, uint32_t *count, ze_device_handle_t *devices) {
    EXPECT(driver == (void *)&h.driver, "zeDeviceGet of an unknown driver");
    if (*count && devices) devices[0] = (ze_device_handle_t)&h.device;
    *count = 1;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeDeviceGetProperties(ze_device_handle_t device, ze_device_properties_t *p) {
    EXPECT(p->stype == ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES, "device properties with stype %#x", p->stype);
    p->type = ZE_DEVICE_TYPE_GPU;
    strcpy(p->name, "Mock Xe GPU");
    p->maxMemAllocSize = MAX_ALLOC;
    for (int i = 0; i < ZE_MAX_DEVICE_UUID_SIZE; i++) p->uuid.id[i] = i;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeDeviceGetComputeProperties(ze_device_handle_t device, ze_device_compute_properties_t *p) {
    EXPECT(p->stype == ZE_STRUCTURE_TYPE_DEVICE_COMPUTE_PROPERTIES, "compute properties with stype %#x", p->stype);
    p->maxTotalGroupSize = p->maxGroupSizeX = 1024;
    p->maxGroupSizeY = p->maxGroupSizeZ = 1;
    p->maxSharedLocalMemory = MAX_LOCAL;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeDeviceGetCommandQueueGroupProperties(ze_device_handle_t device, uint32_t *count, ze_command_queue_group_properties_t *p) {
    if (*count == 0 || !p) {
        *count = 2;
        return ZE_RESULT_SUCCESS;
    }
    if (*count > 2) *count = 2;
    for (uint32_t i = 0; i < *count; i++) {
        EXPECT(p[i].stype == ZE_STRUCTURE_TYPE_COMMAND_QUEUE_GROUP_PROPERTIES, "queue group properties with stype %#x", p[i].stype);
        p[i].flags = ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COPY | (i == COMPUTE_GROUP ? ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COMPUTE : 0);
        p[i].maxMemoryFillPatternSize = FILL_PATTERN_MAX;
        p[i].numQueues = 1;
    }
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeDeviceGetMemoryProperties(ze_device_handle_t device, uint32_t *count, ze_device_memory_properties_t *p) {
    if (*count == 0 || !p) {
        *count = 2;
        return ZE_RESULT_SUCCESS;
    }
    if (*count > 2) *count = 2;
    for (uint32_t i = 0; i < *count; i++) {
        EXPECT(p[i].stype == ZE_STRUCTURE_TYPE_DEVICE_MEMORY_PROPERTIES, "memory properties with stype %#x", p[i].stype);
        p[i].totalSize = i == 0 ? MEM_TOTAL / 4 * 3 : MEM_TOTAL / 4;
    }
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeContextCreate(ze_driver_handle_t driver, const ze_context_desc_t *desc, ze_context_handle_t *context) {
    EXPECT(desc->stype == ZE_STRUCTURE_TYPE_CONTEXT_DESC, "context desc with stype %#x", desc->stype);
    EXPECT(!alive.context, "a second context (the mock models one)");
    alive.context = 1;
    note("context created");
    *context = (ze_context_handle_t)&h.context;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeContextDestroy(ze_context_handle_t context) {
    EXPECT(IS(context, context), "zeContextDestroy of an unknown context");
    EXPECT(!alive.allocs && !alive.list && !alive.pool && !alive.event && !module.alive && !alive.kernels && !alive.logs,
           "context destroyed with children alive: %d allocations, list %d, pool %d, event %d, module %d, %d kernels, %d build logs",
           alive.allocs, alive.list, alive.pool, alive.event, module.alive, alive.kernels, alive.logs);
    alive.context = 0;
    note("context destroyed");
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeCommandListCreateImmediate(ze_context_handle_t context, ze_device_handle_t device, const ze_command_queue_desc_t *desc, ze_command_list_handle_t *list) {
    EXPECT(IS(context, context) && device == (void *)&h.device, "command list of an unknown context or device");
    EXPECT(desc->stype == ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC, "queue desc with stype %#x", desc->stype);
    EXPECT(desc->ordinal == COMPUTE_GROUP && desc->index == 0, "queue %u of group %u: launches need the compute group %d", desc->index, desc->ordinal, COMPUTE_GROUP);
    EXPECT(desc->mode == ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS, "queue mode %d (the mock models asynchronous lists)", desc->mode);
    EXPECT(!alive.list, "a second command list (the mock models one)");
    alive.list = 1;
    *list = (ze_command_list_handle_t)&h.list;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeCommandListDestroy(ze_command_list_handle_t list) {
    EXPECT(IS(list, list), "zeCommandListDestroy of an unknown list");
    EXPECT(!queued, "command list destroyed with %zu commands not waited for", queued);
    alive.list = 0;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeCommandListAppendBarrier(ze_command_list_handle_t list, ze_event_handle_t signal, uint32_t waits, ze_event_handle_t *wait) {
    return append(list, (cmd_t){.kind = BARRIER}, signal, waits);
}

ze_result_t zeCommandListAppendMemoryCopy(ze_command_list_handle_t list, void *dst, const void *src, size_t n, ze_event_handle_t signal, uint32_t waits, ze_event_handle_t *wait) {
    int device_dst = device_range(dst, n), device_src = device_range(src, n);
    EXPECT(device_dst || device_src, "copy of %zu bytes between host buffers", n);
    /* Host memory (upload, download) is lent for one call: the host must see
     * the copy end before the call returns. */
    EXPECT((device_dst && device_src) || signal, "copy of %zu bytes of host memory that signals no event: the host cannot wait for it", n);
    return append(list, (cmd_t){.kind = COPY, .dst = dst, .src = src, .n = n}, signal, waits);
}

ze_result_t zeCommandListAppendMemoryFill(ze_command_list_handle_t list, void *dst, const void *pattern, size_t pattern_size, size_t n, ze_event_handle_t signal, uint32_t waits, ze_event_handle_t *wait) {
    EXPECT(device_range(dst, n), "fill of %zu bytes of host memory", n);
    EXPECT(pattern_size && !(pattern_size & (pattern_size - 1)) && pattern_size <= FILL_PATTERN_MAX && n % pattern_size == 0,
           "fill of %zu bytes with a %zu-byte pattern", n, pattern_size);
    return append(list, (cmd_t){.kind = FILL, .dst = dst, .src = pattern, .n = n, .pattern = pattern_size}, signal, waits);
}

ze_result_t zeEventPoolCreate(ze_context_handle_t context, const ze_event_pool_desc_t *desc, uint32_t ndevices, ze_device_handle_t *devices, ze_event_pool_handle_t *pool) {
    EXPECT(IS(context, context), "event pool of an unknown context");
    EXPECT(desc->stype == ZE_STRUCTURE_TYPE_EVENT_POOL_DESC, "event pool desc with stype %#x", desc->stype);
    EXPECT(desc->flags & ZE_EVENT_POOL_FLAG_HOST_VISIBLE, "event pool not host-visible: the host cannot wait on its events");
    EXPECT(desc->count >= 1, "event pool of %u events", desc->count);
    EXPECT(ndevices == 0 || (ndevices == 1 && devices[0] == (void *)&h.device), "event pool for unknown devices");
    EXPECT(!alive.pool, "a second event pool (the mock models one)");
    alive.pool = 1;
    *pool = (ze_event_pool_handle_t)&h.pool;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeEventPoolDestroy(ze_event_pool_handle_t pool) {
    EXPECT(IS(pool, pool), "zeEventPoolDestroy of an unknown pool");
    EXPECT(!alive.event, "event pool destroyed before its event");
    alive.pool = 0;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeEventCreate(ze_event_pool_handle_t pool, const ze_event_desc_t *desc, ze_event_handle_t *event) {
    EXPECT(IS(pool, pool), "event of an unknown pool");
    EXPECT(desc->stype == ZE_STRUCTURE_TYPE_EVENT_DESC, "event desc with stype %#x", desc->stype);
    EXPECT(desc->index == 0, "event %u of a pool of 1", desc->index);
    EXPECT(!alive.event, "a second event (the mock models one)");
    alive.event = 1;
    event_state = RESET;
    *event = (ze_event_handle_t)&h.event;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeEventDestroy(ze_event_handle_t event) {
    EXPECT(IS(event, event), "zeEventDestroy of an unknown event");
    EXPECT(event_state != SIGNAL_QUEUED, "event destroyed while a queued command is to signal it");
    alive.event = 0;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeEventHostSynchronize(ze_event_handle_t event, uint64_t timeout) {
    EXPECT(IS(event, event), "zeEventHostSynchronize of an unknown event");
    if (event_state == RESET) {
        bug("the host waits on an event no command is to signal: on a device this %s", timeout == UINT64_MAX ? "hangs" : "times out");
        return ZE_RESULT_NOT_READY;
    }
    if (event_state == SIGNAL_QUEUED) {
        for (size_t i = 0; i < signal_end; i++) run(&queue[i]);
        memmove(queue, queue + signal_end, (queued - signal_end) * sizeof *queue);
        queued -= signal_end;
        event_state = SIGNALLED;
    }
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeEventHostReset(ze_event_handle_t event) {
    EXPECT(IS(event, event), "zeEventHostReset of an unknown event");
    EXPECT(event_state != SIGNAL_QUEUED, "event reset before the queued command that signals it ran");
    event_state = RESET;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeMemAllocDevice(ze_context_handle_t context, const ze_device_mem_alloc_desc_t *desc, size_t n, size_t alignment, ze_device_handle_t device, void **ptr) {
    EXPECT(IS(context, context) && device == (void *)&h.device, "allocation on an unknown context or device");
    EXPECT(desc->stype == ZE_STRUCTURE_TYPE_DEVICE_MEM_ALLOC_DESC, "allocation desc with stype %#x", desc->stype);
    EXPECT(!(alignment & (alignment - 1)), "alignment %zu is not a power of two", alignment);
    if (n == 0 || n > MAX_ALLOC) return ZE_RESULT_ERROR_UNSUPPORTED_SIZE;
    if (used + n > MEM_TOTAL) {
        note("out of device memory");
        return ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY;
    }
    size_t align = alignment > 64 ? alignment : 64;
    for (size_t i = 0; i < sizeof allocs / sizeof *allocs; i++)
        if (!allocs[i].p) {
            allocs[i].p = aligned_alloc(align, (n + align - 1) / align * align);
            if (!allocs[i].p) return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
            memset(allocs[i].p, 0xa5, n); /* not zero: only a fill makes it zero */
            allocs[i].n = n;
            used += n;
            alive.allocs++;
            *ptr = allocs[i].p;
            return ZE_RESULT_SUCCESS;
        }
    return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
}

ze_result_t zeMemFree(ze_context_handle_t context, void *ptr) {
    EXPECT(IS(context, context), "zeMemFree on an unknown context");
    for (size_t i = 0; i < sizeof allocs / sizeof *allocs; i++)
        if (allocs[i].p == ptr) {
            for (size_t c = 0; c < queued; c++)
                EXPECT(!uses(&queue[c], ptr, allocs[i].n), "zeMemFree of memory that a queued %s uses", kind_names[queue[c].kind]);
            free(ptr);
            allocs[i].p = NULL;
            used -= allocs[i].n;
            alive.allocs--;
            return ZE_RESULT_SUCCESS;
        }
    bug("zeMemFree of %p, not an allocation", ptr);
    return ZE_RESULT_ERROR_INVALID_ARGUMENT;
}

ze_result_t zeModuleCreate(ze_context_handle_t context, ze_device_handle_t device, const ze_module_desc_t *desc, ze_module_handle_t *out, ze_module_build_log_handle_t *log) {
    EXPECT(IS(context, context) && device == (void *)&h.device, "module of an unknown context or device");
    EXPECT(desc->stype == ZE_STRUCTURE_TYPE_MODULE_DESC, "module desc with stype %#x", desc->stype);
    EXPECT(!module.alive, "a second module (the mock models one)");
    const uint8_t *input = desc->pInputModule;
    size_t n = desc->inputSize;
    build_log = "";
    if (log) {
        alive.logs++;
        *log = (ze_module_build_log_handle_t)&h.log;
    }
    if (desc->format == ZE_MODULE_FORMAT_NATIVE) {
        int valid = n >= NATIVE_LEN && !memcmp(input, NATIVE, NATIVE_LEN);
        note("module native%s", valid ? "" : " rejected");
        if (!valid) return ZE_RESULT_ERROR_INVALID_NATIVE_BINARY;
        input += NATIVE_LEN;
        n -= NATIVE_LEN;
    } else {
        EXPECT(desc->format == ZE_MODULE_FORMAT_IL_SPIRV, "module format %d", desc->format);
        note("module spirv");
        EXPECT(n >= 20 && !memcmp(input, "\x03\x02\x23\x07", 4), "SPIR-V of %zu bytes with no SPIR-V header", n);
        /* Code that starts with "BAD" (after the 20-byte header) fails to build. */
        if (n >= 23 && !memcmp(input + 20, "BAD", 3)) {
            build_log = "error: mock build failure\n";
            return ZE_RESULT_ERROR_MODULE_BUILD_FAILURE;
        }
    }
    module.spirv = malloc(n);
    memcpy(module.spirv, input, n);
    module.size = n;
    module.alive = 1;
    *out = (ze_module_handle_t)&module;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeModuleDestroy(ze_module_handle_t m) {
    EXPECT((void *)m == (void *)&module && module.alive, "zeModuleDestroy of an unknown module");
    EXPECT(!alive.kernels, "module destroyed before its %d kernels", alive.kernels);
    free(module.spirv);
    module.alive = 0;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeModuleBuildLogGetString(ze_module_build_log_handle_t log, size_t *size, char *text) {
    EXPECT(log == (void *)&h.log && alive.logs, "zeModuleBuildLogGetString of an unknown or destroyed log");
    size_t n = strlen(build_log) + 1;
    if (text) {
        EXPECT(*size >= n, "build log read into %zu bytes, not the %zu it takes", *size, n);
        memcpy(text, build_log, *size < n ? *size : n);
    }
    *size = n;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeModuleBuildLogDestroy(ze_module_build_log_handle_t log) {
    EXPECT(log == (void *)&h.log && alive.logs, "zeModuleBuildLogDestroy of an unknown or destroyed log");
    alive.logs--;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeModuleGetNativeBinary(ze_module_handle_t m, size_t *size, uint8_t *binary) {
    EXPECT((void *)m == (void *)&module && module.alive, "zeModuleGetNativeBinary of an unknown module");
    size_t n = NATIVE_LEN + module.size;
    if (binary) {
        EXPECT(*size >= n, "native binary read into %zu bytes, not the %zu it takes", *size, n);
        if (*size >= n) {
            memcpy(binary, NATIVE, NATIVE_LEN);
            memcpy(binary + NATIVE_LEN, module.spirv, module.size);
        }
    }
    *size = n;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeKernelCreate(ze_module_handle_t m, const ze_kernel_desc_t *desc, ze_kernel_handle_t *out) {
    EXPECT((void *)m == (void *)&module && module.alive, "kernel of an unknown module");
    EXPECT(desc->stype == ZE_STRUCTURE_TYPE_KERNEL_DESC, "kernel desc with stype %#x", desc->stype);
    int which = -1;
    for (int i = 0; i < (int)(sizeof kernels / sizeof *kernels); i++)
        if (!strcmp(desc->pKernelName, kernels[i].name)) which = i;
    if (which < 0) return ZE_RESULT_ERROR_INVALID_KERNEL_NAME;
    for (size_t i = 0; i < sizeof kernel_objects / sizeof *kernel_objects; i++)
        if (!kernel_objects[i].alive) {
            kernel_objects[i] = (kernel_t){.alive = 1, .which = which};
            alive.kernels++;
            *out = (ze_kernel_handle_t)&kernel_objects[i];
            return ZE_RESULT_SUCCESS;
        }
    return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
}

ze_result_t zeKernelDestroy(ze_kernel_handle_t handle) {
    kernel_t *k = (kernel_t *)handle;
    EXPECT(k->alive, "zeKernelDestroy of a destroyed kernel");
    for (size_t c = 0; c < queued; c++)
        EXPECT(queue[c].kernel != k, "kernel %s destroyed while a queued launch uses it", kernels[k->which].name);
    k->alive = 0;
    alive.kernels--;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeKernelGetProperties(ze_kernel_handle_t handle, ze_kernel_properties_t *p) {
    EXPECT(p->stype == ZE_STRUCTURE_TYPE_KERNEL_PROPERTIES, "kernel properties with stype %#x", p->stype);
    p->numKernelArgs = strlen(kernels[((kernel_t *)handle)->which].params);
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeKernelSetGroupSize(ze_kernel_handle_t handle, uint32_t x, uint32_t y, uint32_t z) {
    if (x == 0 || x > 1024 || y != 1 || z != 1) return ZE_RESULT_ERROR_INVALID_GROUP_SIZE_DIMENSION;
    ((kernel_t *)handle)->group = x;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeKernelSetArgumentValue(ze_kernel_handle_t handle, uint32_t i, size_t size, const void *value) {
    kernel_t *k = (kernel_t *)handle;
    const char *params = kernels[k->which].params;
    if (i >= strlen(params)) return ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_INDEX;
    if (params[i] == 'l') {
        /* __local memory: a size, no value. */
        if (value || size == 0) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    } else if (size != (params[i] == 'p' ? 8 : 4)) {
        return ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_SIZE;
    } else if (!value && params[i] != 'p') { /* a null value is a null pointer */
        return ZE_RESULT_ERROR_INVALID_NULL_POINTER;
    }
    k->args[i] = 0;
    if (value) memcpy(&k->args[i], value, size);
    EXPECT(params[i] != 'p' || !k->args[i] || device_range((void *)(uintptr_t)k->args[i], 1), "%s argument %u is not device memory", kernels[k->which].name, i);
    k->sizes[i] = size;
    k->set |= 1u << i;
    return ZE_RESULT_SUCCESS;
}

ze_result_t zeCommandListAppendLaunchKernel(ze_command_list_handle_t list, ze_kernel_handle_t handle, const ze_group_count_t *groups, ze_event_handle_t signal, uint32_t waits, ze_event_handle_t *wait) {
    kernel_t *k = (kernel_t *)handle;
    const char *name = kernels[k->which].name, *params = kernels[k->which].params;
    EXPECT(k->alive, "launch of a destroyed kernel");
    EXPECT(k->group, "launch of %s before zeKernelSetGroupSize", name);
    EXPECT(groups->groupCountX && groups->groupCountY && groups->groupCountZ, "launch of %s on an empty grid", name);
    cmd_t c = {.kind = LAUNCH, .kernel = k, .which = k->which, .group = k->group,
               .groups = groups->groupCountX * groups->groupCountY * groups->groupCountZ};
    for (int i = 0; params[i]; i++) {
        EXPECT(k->set & 1u << i, "launch of %s with argument %d never set", name, i);
        if (params[i] == 'l') c.local = k->sizes[i];
    }
    EXPECT(c.local <= MAX_LOCAL, "launch of %s with %zu bytes of __local memory (the device has %d)", name, c.local, MAX_LOCAL);
    memcpy(c.args, k->args, sizeof c.args);
    note("launch %s %ux%ux%u of %u, local %zu", name, groups->groupCountX, groups->groupCountY, groups->groupCountZ, k->group, c.local);
    return append(list, c, signal, waits);
}

/* level-zero-sys resolves these too, but tessera does not call them: a call
 * means the mock must model them first. */
#define UNMODELLED(name, ...)                                       \
    ze_result_t name(__VA_ARGS__) {                                 \
        bug(#name " is called but the mock does not model it");     \
        return ZE_RESULT_ERROR_UNSUPPORTED_FEATURE;                 \
    }
UNMODELLED(zeDriverGetApiVersion, ze_driver_handle_t d, ze_api_version_t *v)
UNMODELLED(zeDeviceGetModuleProperties, ze_device_handle_t d, ze_device_module_properties_t *p)
UNMODELLED(zeMemGetAllocProperties, ze_context_handle_t c, const void *ptr, ze_memory_allocation_properties_t *p, ze_device_handle_t *d)
UNMODELLED(zeKernelSuggestGroupSize, ze_kernel_handle_t k, uint32_t x, uint32_t y, uint32_t z, uint32_t *gx, uint32_t *gy, uint32_t *gz)
