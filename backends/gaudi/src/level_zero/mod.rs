//! The Level Zero runtime of the gaudi backend (production: Intel GPUs and
//! Gaudi): our kernels as one SPIR-V module, built by the driver and cached
//! on disk as its native binary.
//!
//! - Memory is USM device allocations (`zeMemAllocDevice`): raw device
//!   addresses, so the host passes `base + offset` to kernels as the CUDA and
//!   HIP backends do, with no buffer objects to track.
//! - All work goes through ONE immediate command list (asynchronous mode, on
//!   a compute queue group): each append is submitted at once, with no
//!   command lists to close, execute and recycle, which is what a stream of
//!   small kernels needs. Level Zero only guarantees that a list's commands
//!   *start* in order, so every asynchronous command is followed by a
//!   barrier: the list then behaves like a CUDA stream.
//! - Host waits (`synchronize`, `upload`, `download`) signal one host-visible
//!   event from the last command, wait for it and reset it.
//! - `zeMemFree` frees at once, so `free` defers a pointer until the queue is
//!   next drained (any host wait), unless it is idle already: a free never
//!   stalls the queue, and no kernel queued earlier loses its memory.
//!
//! Level Zero objects that are not thread-safe (the command list, the event,
//! kernels and their arguments) are used only under the `queue` lock.
//!
//! Files: `calls.rs` (errors, properties, queries), `discovery.rs` (the
//! devices), `module.rs` (the program, its cache and kernels); this one the
//! queue, memory and launches.

#[macro_use]
mod calls;
mod discovery;
mod module;

/// What `Api::alloc` promises.
const ALIGN: usize = 256;

use crate::api::Api;
use calls::{c_text, check, message, ok, query, BACKEND};
pub use discovery::devices;
use discovery::{found_devices, memory_total};
use level_zero_sys::*;
use module::BUILD_FLAGS;
use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt::Display;
use std::path::Path;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tessera_core::{Error, Result};
use tessera_gpu_kernels::launch::{Args, Config};
use tessera_gpu_kernels::sources::cache_key;

struct Kernel {
    handle: ze_kernel_handle_t,
    /// `numKernelArgs`: the host's arguments, plus one `__local` buffer for
    /// kernels that take one.
    params: u32,
    /// The group size last set (0: none), to skip setting it again.
    group: u32,
    /// Its own (static) `__local` arrays, in bytes: what the dynamic
    /// `__local` buffer may use is the device's limit minus this.
    static_local: u32,
}

/// What only one thread at a time may touch.
struct Queue {
    list: ze_command_list_handle_t,
    /// Host-visible; signalled by the last command before a host wait.
    event: ze_event_handle_t,
    kernels: HashMap<String, Kernel>,
    /// Freed pointers that queued work may still use: released at the next
    /// host wait.
    deferred: Vec<u64>,
    /// Nothing queued since the last host wait.
    idle: bool,
}

pub struct LevelZero {
    ze: &'static ZeLoader,
    device: ze_device_handle_t,
    context: ze_context_handle_t,
    module: ze_module_handle_t,
    pool: ze_event_pool_handle_t,
    queue: Mutex<Queue>,
    /// Our live allocations and their sizes, for `mem_info`.
    sizes: Mutex<HashMap<u64, u64>>,
    allocated: AtomicU64,
    total: u64,
    max_alloc: u64,
    max_local: u32,
    description: String,
}

// SAFETY: Level Zero handles are not tied to the thread that made them.
// The command list, the event and the kernels, which the header says must
// not be used from simultaneous threads, are used only under the `queue`
// lock (and in `Drop`, which has `&mut self`). The context, device and
// module are used concurrently only by calls the header declares
// thread-safe (zeMemAllocDevice, zeKernelCreate); zeMemFree is called once
// per pointer. The loader is a table of function pointers.
unsafe impl Send for LevelZero {}
// SAFETY: as above.
unsafe impl Sync for LevelZero {}

impl LevelZero {
    /// Device `ordinal` of `devices()`, with our kernels built for it (or
    /// loaded from `cache_dir`).
    pub fn open(ordinal: usize, spirv: &[u8], cache_dir: &Path) -> Result<LevelZero> {
        let fail = |m: String| Error::device(BACKEND, m);
        let (ze, mut found) = found_devices().map_err(fail)?;
        let n = found.len();
        if ordinal >= n {
            return Err(fail(format!(
                "no Level Zero device {ordinal}: there are {n} (gaudi:0..gaudi:{})",
                n - 1
            )));
        }
        let f = found.swap_remove(ordinal);
        if spirv.len() < 20
            || !matches!(
                spirv[..4],
                [0x03, 0x02, 0x23, 0x07] | [0x07, 0x23, 0x02, 0x03]
            )
        {
            return Err(fail(format!(
                "the kernels' SPIR-V ({} bytes) is not SPIR-V: rebuild it with kernels/opencl/build-spirv.sh",
                spirv.len()
            )));
        }
        // From here on, Drop destroys whatever was made if a step fails.
        let mut me = LevelZero {
            ze,
            device: f.device,
            context: null_mut(),
            module: null_mut(),
            pool: null_mut(),
            queue: Mutex::new(Queue {
                list: null_mut(),
                event: null_mut(),
                kernels: HashMap::new(),
                deferred: vec![],
                idle: true,
            }),
            sizes: Mutex::new(HashMap::new()),
            allocated: AtomicU64::new(0),
            total: memory_total(ze, f.device).map_err(fail)?,
            max_alloc: f.props.maxMemAllocSize,
            max_local: 0,
            description: f.description(),
        };
        let mut cp = props!(
            ze_device_compute_properties_t,
            ZE_STRUCTURE_TYPE_DEVICE_COMPUTE_PROPERTIES
        );
        let init = props!(
            ze_command_queue_group_properties_t,
            ZE_STRUCTURE_TYPE_COMMAND_QUEUE_GROUP_PROPERTIES
        );
        let groups = query(
            init,
            "zeDeviceGetCommandQueueGroupProperties",
            |n, p| unsafe { ze.zeDeviceGetCommandQueueGroupProperties(f.device, n, p) },
        )
        .map_err(fail)?;
        // The first queue group that runs kernels (group 0 if none says so).
        let ordinal = groups
            .iter()
            .position(|g| g.flags & ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COMPUTE != 0)
            .unwrap_or(0) as u32;
        let queue_desc = ze_command_queue_desc_t {
            stype: ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC,
            pNext: null(),
            ordinal,
            index: 0,
            flags: 0,
            mode: ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS,
            priority: ZE_COMMAND_QUEUE_PRIORITY_NORMAL,
        };
        let pool_desc = ze_event_pool_desc_t {
            stype: ZE_STRUCTURE_TYPE_EVENT_POOL_DESC,
            pNext: null(),
            flags: ZE_EVENT_POOL_FLAG_HOST_VISIBLE,
            count: 1,
        };
        // Host scope: what the device wrote is visible to the host once the
        // event is signalled (downloads).
        let event_desc = ze_event_desc_t {
            stype: ZE_STRUCTURE_TYPE_EVENT_DESC,
            pNext: null(),
            index: 0,
            signal: ZE_EVENT_SCOPE_FLAG_HOST,
            wait: ZE_EVENT_SCOPE_FLAG_HOST,
        };
        let context_desc = ze_context_desc_t {
            stype: ZE_STRUCTURE_TYPE_CONTEXT_DESC,
            pNext: null(),
            flags: 0,
        };
        let q = me.queue.get_mut().unwrap_or_else(PoisonError::into_inner);
        let mut device = f.device;
        // SAFETY: descriptors are the locals above; out-pointers are fields
        // of `me`, which its Drop destroys if a later step fails.
        unsafe {
            ze!(ze, zeDeviceGetComputeProperties(f.device, &mut cp))?;
            me.max_local = cp.maxSharedLocalMemory;
            ze!(
                ze,
                zeContextCreate(f.driver, &context_desc, &mut me.context)
            )?;
            ze!(
                ze,
                zeCommandListCreateImmediate(me.context, f.device, &queue_desc, &mut q.list)
            )?;
            ze!(
                ze,
                zeEventPoolCreate(me.context, &pool_desc, 1, &mut device, &mut me.pool)
            )?;
            ze!(ze, zeEventCreate(me.pool, &event_desc, &mut q.event))?;
        }
        let uuid: String = f.props.uuid.id.iter().map(|b| format!("{b:02x}")).collect();
        // Bytes as Latin-1 chars: one char per byte, so distinct modules
        // give distinct keys.
        let spirv_text: String = spirv.iter().map(|&b| char::from(b)).collect();
        let key = cache_key(&[
            &spirv_text,
            &c_text(&f.props.name),
            &format!("{:#x}", f.driver_version),
            &uuid,
            &BUILD_FLAGS.to_string_lossy(),
        ]);
        me.module = me.load_module(spirv, &cache_dir.join(format!("{key:016x}.bin")))?;
        Ok(me)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic under the lock leaves nothing half-done that the next user
        // would trust: kernel arguments are all set again at each launch.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sizes(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.sizes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a command (`append` gets the list), then a barrier: Level
    /// Zero only orders when commands start, the barrier makes the next one
    /// wait for this one to end, as on a CUDA stream.
    fn enqueue(
        &self,
        q: &mut Queue,
        call: impl Display,
        append: impl FnOnce(ze_command_list_handle_t) -> ze_result_t,
    ) -> Result<()> {
        q.idle = false;
        check(append(q.list), call)?;
        // SAFETY: our list, under the queue lock; no events.
        unsafe {
            ze!(
                self.ze,
                zeCommandListAppendBarrier(q.list, null_mut(), 0, null_mut())
            )
        }
    }

    /// Appends a command that signals `q.event` (after the barriers, it ends
    /// after all work before it), waits for it, resets it and releases the
    /// deferred frees.
    fn finish(
        &self,
        q: &mut Queue,
        call: &str,
        append: impl FnOnce(ze_command_list_handle_t, ze_event_handle_t) -> ze_result_t,
    ) -> Result<()> {
        q.idle = false;
        check(append(q.list, q.event), call)?;
        // SAFETY: our event, under the queue lock.
        let (r, reset) = unsafe {
            (
                self.ze.zeEventHostSynchronize(q.event, u64::MAX),
                self.ze.zeEventHostReset(q.event),
            )
        };
        check(r, "zeEventHostSynchronize")?;
        check(reset, "zeEventHostReset")?;
        q.idle = true;
        for ptr in std::mem::take(&mut q.deferred) {
            self.release(ptr);
        }
        Ok(())
    }

    fn release(&self, ptr: u64) {
        // SAFETY: an allocation of ours, released once, no work using it queued.
        if let Err(e) = ok(
            unsafe { self.ze.zeMemFree(self.context, ptr as *mut c_void) },
            "zeMemFree",
        ) {
            tracing::warn!("{e}");
        }
        if let Some(bytes) = self.sizes().remove(&ptr) {
            self.allocated.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// A copy in queue order; `wait`: to or from host memory borrowed only
    /// for the call, so the call waits for the copy to end.
    fn memcpy(&self, dst: *mut c_void, src: *const c_void, bytes: usize, wait: bool) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let call = "zeCommandListAppendMemoryCopy";
        // SAFETY: our list, under the queue lock; device memory of ours, and
        // host memory alive until `finish` has seen the copy end.
        let append = |list, event| unsafe {
            self.ze
                .zeCommandListAppendMemoryCopy(list, dst, src, bytes, event, 0, null_mut())
        };
        if wait {
            self.finish(&mut self.queue(), call, append)
        } else {
            self.enqueue(&mut self.queue(), call, |list| append(list, null_mut()))
        }
    }

    fn try_alloc(&self, bytes: usize) -> std::result::Result<u64, ze_result_t> {
        let desc = ze_device_mem_alloc_desc_t {
            stype: ZE_STRUCTURE_TYPE_DEVICE_MEM_ALLOC_DESC,
            pNext: null(),
            flags: 0,
            ordinal: 0,
        };
        let mut p = null_mut();
        // SAFETY: our context and device; zeMemAllocDevice is thread-safe.
        match unsafe {
            self.ze
                .zeMemAllocDevice(self.context, &desc, bytes, ALIGN, self.device, &mut p)
        } {
            ZE_RESULT_SUCCESS if p.is_null() => Err(ZE_RESULT_ERROR_UNKNOWN),
            ZE_RESULT_SUCCESS => Ok(p as u64),
            r => Err(r),
        }
    }
}

// SAFETY (the appends below): our list and kernels, under the queue lock;
// device memory of ours.
impl Api for LevelZero {
    fn runtime_name(&self) -> &'static str {
        "level-zero"
    }

    fn device_description(&self) -> String {
        self.description.clone()
    }

    fn mem_info(&self) -> Result<(u64, u64)> {
        // Level Zero core has no free-memory query (only the Sysman API,
        // which needs ZES_ENABLE_SYSMAN): what we have not allocated
        // (deferred frees still count as allocated).
        let used = self.allocated.load(Ordering::Relaxed);
        Ok((self.total.saturating_sub(used), self.total))
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        let bytes = bytes.max(1);
        if self.max_alloc > 0 && bytes as u64 > self.max_alloc {
            let max = self.max_alloc;
            return Err(Error::device(
                BACKEND,
                format!("an allocation of {bytes} bytes is larger than the device allows in one piece ({max} bytes, maxMemAllocSize)"),
            ));
        }
        let mut r = self.try_alloc(bytes);
        if r == Err(ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY) && !self.queue().deferred.is_empty() {
            // Deferred frees make room once the queue drains.
            self.synchronize()?;
            r = self.try_alloc(bytes);
        }
        let ptr = r.map_err(|r| {
            Error::device(
                BACKEND,
                message(r, format_args!("zeMemAllocDevice({bytes} bytes)")),
            )
        })?;
        self.sizes().insert(ptr, bytes as u64);
        self.allocated.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(ptr)
    }

    /// The size is known from `sizes`, which `Drop` also needs.
    fn free(&self, ptr: u64, _bytes: usize) {
        if ptr == 0 {
            return;
        }
        let mut q = self.queue();
        if q.idle {
            self.release(ptr);
        } else {
            q.deferred.push(ptr);
        }
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.memcpy(dst as *mut c_void, src.as_ptr().cast(), src.len(), true)
    }

    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.memcpy(
            dst.as_mut_ptr().cast(),
            src as *const c_void,
            dst.len(),
            true,
        )
    }

    fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.memcpy(dst as *mut c_void, src as *const c_void, bytes, false)
    }

    fn fill_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // Static, so valid whenever the driver reads it. A 1-byte pattern is
        // within every queue group's maxMemoryFillPatternSize.
        static ZERO: u8 = 0;
        self.enqueue(
            &mut self.queue(),
            "zeCommandListAppendMemoryFill",
            |list| unsafe {
                self.ze.zeCommandListAppendMemoryFill(
                    list,
                    dst as *mut c_void,
                    (&ZERO as *const u8).cast(),
                    1,
                    bytes,
                    null_mut(),
                    0,
                    null_mut(),
                )
            },
        )
    }

    fn has_kernel(&self, name: &str) -> bool {
        let mut q = self.queue();
        if q.kernels.contains_key(name) {
            return true;
        }
        match self.create_kernel(name) {
            Ok(k) => {
                q.kernels.insert(name.to_string(), k);
                true
            }
            Err(_) => false,
        }
    }

    fn launch(&self, name: &str, cfg: &Config, args: &Args) -> Result<()> {
        if cfg.is_empty() {
            return Ok(());
        }
        let mut guard = self.queue();
        let q = &mut *guard;
        if !q.kernels.contains_key(name) {
            let k = self.create_kernel(name)?;
            q.kernels.insert(name.to_string(), k);
        }
        let Some(k) = q.kernels.get_mut(name) else {
            return Err(Error::invalid(format!("kernel {name} is not in the cache")));
        };
        cfg.check_shared(BACKEND, name, self.max_local.saturating_sub(k.static_local))?;
        let (ze, n) = (self.ze, args.kinds().len() as u32);
        let local = match k.params {
            p if p == n => false,
            p if p == n + 1 => true,
            p => {
                return Err(Error::invalid(format!(
                    "kernel {name} takes {p} parameters but the host passes {n}: the kernel sources and the host disagree"
                )))
            }
        };
        // SAFETY: our kernel, under the queue lock. Each value is 8 bytes, of
        // which a pointer uses 8 (a USM address of ours, or 0 for null) and
        // an int or float the first 4; the driver copies them.
        for (i, (kind, value)) in args.kinds().chars().zip(args.values()).enumerate() {
            let size = match kind {
                'p' => 8,
                'i' | 'f' => 4,
                other => {
                    return Err(Error::invalid(format!(
                        "kernel {name}: argument {i} of kind {other:?}"
                    )))
                }
            };
            let r = unsafe {
                ze.zeKernelSetArgumentValue(k.handle, i as u32, size, value.as_ptr().cast())
            };
            check(r, format_args!("zeKernelSetArgumentValue({name}, {i})"))?;
        }
        if local {
            // A __local parameter takes a size and no value.
            let r = unsafe {
                ze.zeKernelSetArgumentValue(k.handle, n, cfg.shared.max(4) as usize, null())
            };
            check(r, format_args!("zeKernelSetArgumentValue({name}, __local)"))?;
        }
        if k.group != cfg.block {
            let r = unsafe { ze.zeKernelSetGroupSize(k.handle, cfg.block, 1, 1) };
            check(
                r,
                format_args!("zeKernelSetGroupSize({name}, {})", cfg.block),
            )?;
            k.group = cfg.block;
        }
        let groups = ze_group_count_t {
            groupCountX: cfg.grid.0,
            groupCountY: cfg.grid.1,
            groupCountZ: cfg.grid.2,
        };
        let kernel = k.handle;
        self.enqueue(
            q,
            format_args!("zeCommandListAppendLaunchKernel({name})"),
            |list| unsafe {
                ze.zeCommandListAppendLaunchKernel(list, kernel, &groups, null_mut(), 0, null_mut())
            },
        )
    }

    fn synchronize(&self) -> Result<()> {
        let mut q = self.queue();
        if q.idle {
            return Ok(());
        }
        // A barrier with no wait events waits for all previous commands.
        self.finish(&mut q, "zeCommandListAppendBarrier", |list, event| unsafe {
            self.ze
                .zeCommandListAppendBarrier(list, event, 0, null_mut())
        })
    }

    fn max_local_bytes(&self) -> u32 {
        self.max_local
    }
}

impl Drop for LevelZero {
    fn drop(&mut self) {
        let ze = self.ze;
        let q = self.queue.get_mut().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: our objects, each destroyed once, children first, after the
        // queue drained; null ones (a failed `open`) are skipped.
        unsafe {
            let busy = !q.idle && !q.list.is_null() && !q.event.is_null();
            if busy
                && ze.zeCommandListAppendBarrier(q.list, q.event, 0, null_mut())
                    == ZE_RESULT_SUCCESS
            {
                ze.zeEventHostSynchronize(q.event, u64::MAX);
            }
            // Deferred frees are among the live allocations.
            let sizes = self.sizes.get_mut().unwrap_or_else(PoisonError::into_inner);
            for &ptr in sizes.keys() {
                ze.zeMemFree(self.context, ptr as *mut c_void);
            }
            for k in q.kernels.values() {
                ze.zeKernelDestroy(k.handle);
            }
            if !self.module.is_null() {
                ze.zeModuleDestroy(self.module);
            }
            if !q.event.is_null() {
                ze.zeEventDestroy(q.event);
            }
            if !self.pool.is_null() {
                ze.zeEventPoolDestroy(self.pool);
            }
            if !q.list.is_null() {
                ze.zeCommandListDestroy(q.list);
            }
            if !self.context.is_null() {
                ze.zeContextDestroy(self.context);
            }
        }
    }
}
