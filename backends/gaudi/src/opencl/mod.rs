//! The OpenCL runtime of the gaudi backend, for any OpenCL 2.0+ device with
//! shared virtual memory: our kernels as the SPIR-V Level Zero loads, on
//! devices that take SPIR-V, else built from their OpenCL C sources. In CI
//! it runs them on PoCL (OpenCL on the CPU, from source) and on Intel's
//! OpenCL CPU runtime (the SPIR-V), which proves the kernels and all host
//! logic above `Api` with no Intel hardware.
//!
//! `libOpenCL.so.1` (the ICD loader) is opened at run time by cl3. Memory is
//! coarse-grained SVM: raw device pointers, like Level Zero's USM, so
//! kernels take `base + offset` like everywhere else. One in-order queue
//! orders all work; frees are enqueued on it (`clEnqueueSVMFree`), so a
//! buffer outlives the kernels queued before its last handle dropped.
//!
//! Files: `discovery.rs` (the devices), `program.rs` (the program, its
//! cache and kernels' parameters); this one memory, copies and launches.

mod discovery;
mod program;

use crate::api::Api;
use cl3::types::{
    cl_command_queue, cl_context, cl_device_id, cl_int, cl_kernel, cl_program, CL_TRUE,
};
pub use discovery::devices;
use discovery::{info_string, usable_devices, DISCOVERY};
use program::program_form;
pub use program::ProgramForm;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tessera_core::{Error, Result};
use tessera_gpu_kernels::launch::{Args, Config};

const BACKEND: &str = "gaudi";

fn cl_error(call: &str, code: cl_int) -> Error {
    let hint = match code {
        cl3::error_codes::DLOPEN_RUNTIME_LOAD_FAILED => {
            " (libOpenCL.so.1 not found: install an OpenCL ICD loader and driver, e.g. Debian's ocl-icd-libopencl1 and pocl-opencl-icd)"
        }
        cl3::error_codes::CL_OUT_OF_RESOURCES | cl3::error_codes::CL_MEM_OBJECT_ALLOCATION_FAILURE => {
            " (the device is out of memory: lower --memory-utilization or use a smaller model)"
        }
        _ => "",
    };
    Error::device(
        BACKEND,
        format!(
            "OpenCL {call} answered {} ({code}){hint}",
            cl3::error_codes::error_text(code)
        ),
    )
}

/// A kernel of the program and its parameter kinds (`p` global pointer,
/// `i` int, `f` float, `l` local memory), read from the program; from
/// SPIR-V, OpenCL gives only their count (`?` each), and the kinds were
/// checked when the SPIR-V was built (backends/gaudi/tests/spirv.rs).
struct Kernel {
    handle: cl_kernel,
    kinds: String,
}

pub struct OpenCl {
    device: cl_device_id,
    context: cl_context,
    queue: cl_command_queue,
    program: cl_program,
    /// Kernels by name, made on first use. The lock also makes setting a
    /// kernel's arguments and enqueuing it one step, as OpenCL requires.
    kernels: Mutex<HashMap<String, Kernel>>,
    description: String,
    total: u64,
    allocated: AtomicU64,
    max_local: u32,
    /// `CL_DEVICE_MAX_MEM_ALLOC_SIZE`: the largest single allocation.
    max_alloc: u64,
    /// The program is built with `-DTSR_CPU` (CPU devices such as PoCL).
    cpu: bool,
    form: ProgramForm,
}

// SAFETY: OpenCL contexts, queues and programs are thread-safe objects
// (OpenCL 2.0 §A.2); kernels are only touched under the `kernels` lock.
unsafe impl Send for OpenCl {}
// SAFETY: as above.
unsafe impl Sync for OpenCl {}

impl OpenCl {
    /// Device `ordinal` of `devices()`, with our program built for it (or
    /// loaded from the build cache in `cache_dir`). `cpu_kernels`: whether
    /// the kernels use their CPU work mappings (`-DTSR_CPU`); `None` decides
    /// by the device's type. Tests force `Some(false)` on PoCL to check the
    /// mappings GPUs (and Level Zero) run.
    pub fn open(ordinal: usize, cache_dir: &Path, cpu_kernels: Option<bool>) -> Result<OpenCl> {
        let discovery = DISCOVERY.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = usable_devices().map_err(|e| Error::device(BACKEND, e))?;
        if ordinal >= all.len() {
            return Err(Error::device(
                BACKEND,
                format!(
                    "no OpenCL device {ordinal}: there are {} (gaudi:0..gaudi:{})",
                    all.len(),
                    all.len() - 1
                ),
            ));
        }
        let dev = all.swap_remove(ordinal);
        let (form, form_chosen) = program_form(dev.id)?;
        let context = cl3::context::create_context(&[dev.id], ptr::null(), None, ptr::null_mut())
            .map_err(|e| cl_error("clCreateContext", e))?;
        let mut cl = OpenCl {
            device: dev.id,
            context,
            queue: ptr::null_mut(),
            program: ptr::null_mut(),
            kernels: Mutex::new(HashMap::new()),
            description: dev.description,
            total: dev.memory,
            allocated: AtomicU64::new(0),
            max_local: cl3::device::get_device_info(dev.id, cl3::device::CL_DEVICE_LOCAL_MEM_SIZE)
                .map(u64::from)
                .map_or(0, |v| v.min(u32::MAX as u64) as u32),
            max_alloc: cl3::device::get_device_info(
                dev.id,
                cl3::device::CL_DEVICE_MAX_MEM_ALLOC_SIZE,
            )
            .map(u64::from)
            .unwrap_or(u64::MAX),
            form,
            cpu: cpu_kernels.unwrap_or_else(|| {
                cl3::device::get_device_info(dev.id, cl3::device::CL_DEVICE_TYPE)
                    .map(u64::from)
                    .is_ok_and(|t| t & cl3::device::CL_DEVICE_TYPE_CPU != 0)
            }),
        };
        // SAFETY: a context and device of ours; default (in-order) properties.
        cl.queue = unsafe {
            cl3::command_queue::create_command_queue_with_properties(context, dev.id, ptr::null())
        }
        .map_err(|e| cl_error("clCreateCommandQueueWithProperties", e))?;
        drop(discovery);
        // SPIR-V is the GPU module as built: no CPU work mappings in it.
        let cpu_mappings = cl.cpu;
        cl.cpu &= cl.form == ProgramForm::Source;
        cl.program = match cl.build(cache_dir) {
            // A device that takes SPIR-V may still lack what the module
            // needs (sub-groups): the sources build for any device.
            Err(e) if cl.form == ProgramForm::Spirv && !form_chosen => {
                tracing::warn!("the SPIR-V kernels do not build here ({e}); building from source");
                cl.form = ProgramForm::Source;
                cl.cpu = cpu_mappings;
                cl.build(cache_dir)?
            }
            built => built?,
        };
        tracing::info!(
            "OpenCL program for {} built from {}",
            cl.description,
            match cl.form {
                ProgramForm::Source if cl.cpu => "source, with the CPU work mappings",
                ProgramForm::Source => "source",
                ProgramForm::Spirv => "the SPIR-V that Level Zero loads",
            }
        );
        Ok(cl)
    }

    /// Kernel `name`, made on first use.
    fn kernel<'a>(
        &self,
        kernels: &'a mut HashMap<String, Kernel>,
        name: &str,
    ) -> Result<&'a Kernel> {
        if !kernels.contains_key(name) {
            let cname = CString::new(name).map_err(|_| Error::invalid("kernel name"))?;
            let handle = cl3::kernel::create_kernel(self.program, &cname)
                .map_err(|e| cl_error(&format!("clCreateKernel({name})"), e))?;
            let kinds = match self.kernel_kinds(handle, name) {
                Ok(k) => k,
                Err(e) => {
                    // SAFETY: created above, used by nothing.
                    unsafe { cl3::kernel::release_kernel(handle).ok() };
                    return Err(e);
                }
            };
            kernels.insert(name.to_string(), Kernel { handle, kinds });
        }
        kernels
            .get(name)
            .ok_or_else(|| Error::invalid(format!("kernel {name} is not in the cache")))
    }

    fn set_args(k: &Kernel, name: &str, cfg: &Config, args: &Args) -> Result<()> {
        let host = args.kinds();
        let unknown = k.kinds.chars().all(|c| c == '?');
        let local = match k.kinds.strip_prefix(host) {
            Some("") => false,
            Some("l") => true,
            _ if unknown && k.kinds.len() == host.len() => false,
            _ if unknown && k.kinds.len() == host.len() + 1 => true,
            _ => {
                return Err(Error::invalid(format!(
                    "kernel {name} takes ({}) but the host passes ({host}): the kernel sources and the host disagree",
                    k.kinds
                )))
            }
        };
        for (i, (kind, value)) in host.chars().zip(args.values()).enumerate() {
            let i = i as u32;
            // SAFETY: each value matches the parameter's kind, checked above;
            // pointers are SVM addresses of ours (or null).
            let r = unsafe {
                match kind {
                    'p' => {
                        let p = u64::from_le_bytes(*value);
                        if p == 0 {
                            // A null global pointer: OpenCL takes it as a null buffer.
                            cl3::kernel::set_kernel_arg(k.handle, i, 8, ptr::null())
                        } else {
                            cl3::kernel::set_kernel_arg_svm_pointer(k.handle, i, p as *const c_void)
                        }
                    }
                    _ => {
                        cl3::kernel::set_kernel_arg(k.handle, i, 4, value.as_ptr() as *const c_void)
                    }
                }
            };
            r.map_err(|e| cl_error(&format!("clSetKernelArg({name}, {i})"), e))?;
        }
        if local {
            let bytes = (cfg.shared as usize).max(4);
            // SAFETY: a __local parameter takes a size and no value.
            unsafe { cl3::kernel::set_kernel_arg(k.handle, host.len() as u32, bytes, ptr::null()) }
                .map_err(|e| cl_error(&format!("clSetKernelArg({name}, local)"), e))?;
        }
        Ok(())
    }
}

impl Api for OpenCl {
    fn runtime_name(&self) -> &'static str {
        "opencl"
    }

    fn device_description(&self) -> String {
        self.description.clone()
    }

    fn mem_info(&self) -> Result<(u64, u64)> {
        // OpenCL has no free-memory query: what we have not allocated.
        let used = self.allocated.load(Ordering::Relaxed);
        Ok((self.total.saturating_sub(used), self.total))
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        if bytes as u64 > self.max_alloc {
            return Err(Error::device(
                BACKEND,
                format!(
                    "an allocation of {bytes} bytes exceeds the largest this OpenCL device allows ({} bytes): use a smaller model or --memory-utilization",
                    self.max_alloc
                ),
            ));
        }
        let flags = cl3::memory::CL_MEM_READ_WRITE;
        // Alignment 0 is the device's largest type's (PoCL: 128 bytes);
        // larger values may be refused.
        // SAFETY: our context; the pointer is freed by `free`.
        let p = unsafe { cl3::memory::svm_alloc(self.context, flags, bytes.max(1), 0) }
            .map_err(|e| cl_error("clSVMAlloc", e))?;
        if p.is_null() {
            return Err(Error::device(
                BACKEND,
                format!(
                    "OpenCL clSVMAlloc of {bytes} bytes failed (out of device memory: lower --memory-utilization or use a smaller model)"
                ),
            ));
        }
        self.allocated.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(p as u64)
    }

    fn free(&self, ptr: u64, bytes: usize) {
        self.allocated.fetch_sub(bytes as u64, Ordering::Relaxed);
        let p = [ptr as *const c_void];
        // SAFETY: an SVM pointer of ours, freed once, after the queued work.
        let r = unsafe {
            cl3::command_queue::enqueue_svm_free(
                self.queue,
                1,
                p.as_ptr(),
                None,
                ptr::null_mut(),
                0,
                ptr::null(),
            )
        };
        match r {
            Ok(event) => {
                // SAFETY: the event returned above, not used otherwise.
                unsafe { cl3::event::release_event(event).ok() };
            }
            Err(e) => tracing::warn!("{}", cl_error("clEnqueueSVMFree", e)),
        }
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: a blocking copy into our SVM memory, bounds checked by the caller.
        let e = unsafe {
            cl3::command_queue::enqueue_svm_mem_cpy(
                self.queue,
                CL_TRUE,
                dst as *mut c_void,
                src.as_ptr() as *const c_void,
                src.len(),
                0,
                ptr::null(),
            )
        }
        .map_err(|e| cl_error("clEnqueueSVMMemcpy (upload)", e))?;
        release(e);
        Ok(())
    }

    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: a blocking copy out of our SVM memory, bounds checked by the caller.
        let e = unsafe {
            cl3::command_queue::enqueue_svm_mem_cpy(
                self.queue,
                CL_TRUE,
                dst.as_mut_ptr() as *mut c_void,
                src as *const c_void,
                dst.len(),
                0,
                ptr::null(),
            )
        }
        .map_err(|e| cl_error("clEnqueueSVMMemcpy (download)", e))?;
        release(e);
        Ok(())
    }

    fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: both SVM ranges of ours, bounds checked by the caller.
        let e = unsafe {
            cl3::command_queue::enqueue_svm_mem_cpy(
                self.queue,
                0,
                dst as *mut c_void,
                src as *const c_void,
                bytes,
                0,
                ptr::null(),
            )
        }
        .map_err(|e| cl_error("clEnqueueSVMMemcpy", e))?;
        release(e);
        Ok(())
    }

    fn fill_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let zero = 0u8;
        // SAFETY: our SVM range; the 1-byte pattern is copied at enqueue time.
        let e = unsafe {
            cl3::command_queue::enqueue_svm_mem_fill(
                self.queue,
                dst as *mut c_void,
                &zero as *const u8 as *const c_void,
                1,
                bytes,
                0,
                ptr::null(),
            )
        }
        .map_err(|e| cl_error("clEnqueueSVMMemFill", e))?;
        release(e);
        Ok(())
    }

    fn has_kernel(&self, name: &str) -> bool {
        self.kernels
            .lock()
            .map_err(|_| Error::invalid("OpenCL kernel lock poisoned"))
            .and_then(|mut kernels| self.kernel(&mut kernels, name).map(|_| ()))
            .is_ok()
    }

    fn launch(&self, name: &str, cfg: &Config, args: &Args) -> Result<()> {
        if cfg.is_empty() {
            return Ok(());
        }
        cfg.check_shared(BACKEND, name, self.max_local)?;
        let mut kernels = self
            .kernels
            .lock()
            .map_err(|_| Error::invalid("OpenCL kernel lock poisoned"))?;
        let k = self.kernel(&mut kernels, name)?;
        Self::set_args(k, name, cfg, args)?;
        let block = cfg.block as usize;
        let global = [
            cfg.grid.0 as usize * block,
            cfg.grid.1 as usize,
            cfg.grid.2 as usize,
        ];
        let local = [block, 1, 1];
        // SAFETY: all arguments set above; sizes describe whole work-groups.
        let e = unsafe {
            cl3::command_queue::enqueue_nd_range_kernel(
                self.queue,
                k.handle,
                3,
                ptr::null(),
                global.as_ptr(),
                local.as_ptr(),
                0,
                ptr::null(),
            )
        }
        .map_err(|e| cl_error(&format!("clEnqueueNDRangeKernel({name})"), e))?;
        release(e);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        cl3::command_queue::finish(self.queue).map_err(|e| cl_error("clFinish", e))
    }

    fn max_local_bytes(&self) -> u32 {
        self.max_local
    }

    fn is_cpu(&self) -> bool {
        self.cpu
    }
}

/// Releases an event we do not wait on.
fn release(event: cl3::types::cl_event) {
    if !event.is_null() {
        // SAFETY: an event returned by an enqueue call, released once.
        unsafe { cl3::event::release_event(event).ok() };
    }
}

impl Drop for OpenCl {
    fn drop(&mut self) {
        // SAFETY: our objects, released once, after the queue drained.
        unsafe {
            cl3::command_queue::finish(self.queue).ok();
            if let Ok(kernels) = self.kernels.get_mut() {
                for k in kernels.values() {
                    cl3::kernel::release_kernel(k.handle).ok();
                }
            }
            if !self.program.is_null() {
                cl3::program::release_program(self.program).ok();
            }
            if !self.queue.is_null() {
                cl3::command_queue::release_command_queue(self.queue).ok();
            }
            cl3::context::release_context(self.context).ok();
        }
    }
}
