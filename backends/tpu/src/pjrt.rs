//! A safe layer over the PJRT C API: a loaded plugin, a client, device
//! buffers, compiled executables. Errors come back as values naming the call
//! that failed; handles free themselves when dropped; every asynchronous call
//! is awaited before it returns, so callers never see a PJRT event.

use crate::ffi::{self, fn_index as F, PJRT_Api};
use std::ffi::c_void;
use std::path::Path;
use std::sync::Arc;
use tessera_core::{DType, Error, Result};

fn err(message: impl Into<String>) -> Error {
    Error::device("tpu", message)
}

/// A PJRT plugin: the shared library and its function table.
pub struct Plugin {
    api: *const PJRT_Api,
    /// API version the plugin implements.
    pub version: (i32, i32),
    // Dropped last: the table points into it.
    _lib: libloading::Library,
}

// SAFETY: the PJRT C API is thread-safe by contract; the table is read-only.
unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

impl Plugin {
    /// Opens the plugin at `path`, checks its API version and initialises it.
    /// Never call this on libtpu off a TPU host (it polls a metadata server).
    pub fn load(path: &Path) -> Result<Arc<Plugin>> {
        // SAFETY: loading a library runs its initialisers; a PJRT plugin's are
        // benign. The caller chose the path.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
            err(format!(
                "cannot load the PJRT plugin {}: {e}",
                path.display()
            ))
        })?;
        // SAFETY: `GetPjrtApi` has this signature in every PJRT plugin.
        let api = unsafe {
            let get: libloading::Symbol<ffi::GetPjrtApi> =
                lib.get(b"GetPjrtApi\0").map_err(|e| {
                    err(format!(
                        "{} is not a PJRT plugin (no GetPjrtApi): {e}",
                        path.display()
                    ))
                })?;
            get()
        };
        if api.is_null() {
            return Err(err(format!("{}: GetPjrtApi returned null", path.display())));
        }
        // SAFETY: non-null, and the header part of PJRT_Api is stable across versions.
        let (size, version) = unsafe {
            let v = &(*api).pjrt_api_version;
            ((*api).struct_size, (v.major_version, v.minor_version))
        };
        if version.0 != 0 {
            return Err(err(format!(
                "{}: PJRT API {}.{} is not supported (tessera speaks 0.x)",
                path.display(),
                version.0,
                version.1
            )));
        }
        let needed = ffi::FUNCTIONS_OFFSET + F::NEEDED * std::mem::size_of::<*const c_void>();
        if size < needed {
            return Err(err(format!(
                "{}: the PJRT API table has {size} bytes, tessera needs {needed} (plugin too old)",
                path.display()
            )));
        }
        let plugin = Plugin {
            api,
            version,
            _lib: lib,
        };
        let mut a = ffi::PJRT_Plugin_Initialize_Args::new();
        plugin.call(F::PLUGIN_INITIALIZE, "PJRT_Plugin_Initialize", &mut a)?;
        Ok(Arc::new(plugin))
    }

    fn function(&self, index: usize) -> *const c_void {
        // SAFETY: `load` checked the table has `F::NEEDED` entries, and every
        // index used is below that.
        unsafe { (*self.api).functions[index] }
    }

    /// Calls function `index` with `args`; a returned error becomes a value.
    fn call<A>(&self, index: usize, name: &str, args: &mut A) -> Result<()> {
        let f = self.function(index);
        if f.is_null() {
            return Err(err(format!("the plugin does not implement {name}")));
        }
        // SAFETY: entry `index` has the `ApiFn` signature and `args` is the
        // args struct it takes, sized by its `new()`.
        let e = unsafe {
            let f: ffi::ApiFn = std::mem::transmute(f);
            f(args as *mut A as *mut c_void)
        };
        self.check(e, name)
    }

    /// Turns a `PJRT_Error*` into a value (freeing it).
    fn check(&self, e: *mut ffi::PJRT_Error, name: &str) -> Result<()> {
        if e.is_null() {
            return Ok(());
        }
        let mut m = ffi::PJRT_Error_Message_Args::new();
        m.error = e;
        let mut c = ffi::PJRT_Error_GetCode_Args::new();
        c.error = e;
        // SAFETY: the error functions have the `VoidFn`/`ApiFn` signatures; the
        // message stays valid until the error is destroyed below.
        let message = unsafe {
            let msg: ffi::VoidFn = std::mem::transmute(self.function(F::ERROR_MESSAGE));
            msg(&mut m as *mut _ as *mut c_void);
            let code: ffi::ApiFn = std::mem::transmute(self.function(F::ERROR_GET_CODE));
            code(&mut c as *mut _ as *mut c_void);
            let text = if m.message.is_null() {
                String::new()
            } else {
                let bytes = std::slice::from_raw_parts(m.message as *const u8, m.message_size);
                String::from_utf8_lossy(bytes).into_owned()
            };
            let mut d = ffi::PJRT_Error_Destroy_Args::new();
            d.error = e;
            let destroy: ffi::VoidFn = std::mem::transmute(self.function(F::ERROR_DESTROY));
            destroy(&mut d as *mut _ as *mut c_void);
            text
        };
        Err(err(format!("{name} failed (code {}): {message}", c.code)))
    }

    /// Waits for `event` and frees it; its error, if any, becomes a value.
    fn await_event(&self, event: *mut ffi::PJRT_Event, name: &str) -> Result<()> {
        if event.is_null() {
            return Ok(());
        }
        let mut a = ffi::PJRT_Event_Await_Args::new();
        a.event = event;
        let waited = self.call(F::EVENT_AWAIT, name, &mut a);
        let mut d = ffi::PJRT_Event_Destroy_Args::new();
        d.event = event;
        let destroyed = self.call(F::EVENT_DESTROY, "PJRT_Event_Destroy", &mut d);
        waited.and(destroyed)
    }
}

/// A PJRT client: the devices of one plugin.
pub struct Client {
    plugin: Arc<Plugin>,
    raw: *mut ffi::PJRT_Client,
    devices: Vec<*mut ffi::PJRT_Device>,
}

// SAFETY: PJRT clients are thread-safe by contract.
unsafe impl Send for Client {}
unsafe impl Sync for Client {}

/// A serialized `CompileOptionsProto` with one replica and one partition
/// (empty options abort the XLA CPU plugin).
const COMPILE_OPTIONS: &[u8] = &[0x1a, 0x04, 0x20, 0x01, 0x28, 0x01];

fn buffer_type(d: DType) -> i32 {
    match d {
        DType::F32 => ffi::BUFFER_TYPE_F32,
        DType::BF16 => ffi::BUFFER_TYPE_BF16,
        DType::F16 => ffi::BUFFER_TYPE_F16,
        DType::I32 => ffi::BUFFER_TYPE_S32,
    }
}

fn dtype_of(t: i32) -> Option<DType> {
    match t {
        ffi::BUFFER_TYPE_F32 => Some(DType::F32),
        ffi::BUFFER_TYPE_BF16 => Some(DType::BF16),
        ffi::BUFFER_TYPE_F16 => Some(DType::F16),
        ffi::BUFFER_TYPE_S32 => Some(DType::I32),
        _ => None,
    }
}

impl Client {
    pub fn new(plugin: Arc<Plugin>) -> Result<Client> {
        let mut a = ffi::PJRT_Client_Create_Args::new();
        plugin.call(F::CLIENT_CREATE, "PJRT_Client_Create", &mut a)?;
        let mut client = Client {
            raw: a.client,
            plugin,
            devices: vec![],
        };
        let mut d = ffi::PJRT_Client_AddressableDevices_Args::new();
        d.client = client.raw;
        client.plugin.call(
            F::CLIENT_ADDRESSABLE_DEVICES,
            "PJRT_Client_AddressableDevices",
            &mut d,
        )?;
        if !d.addressable_devices.is_null() {
            // SAFETY: the plugin returned this many device pointers, owned by the client.
            client.devices = unsafe {
                std::slice::from_raw_parts(d.addressable_devices, d.num_addressable_devices)
            }
            .to_vec();
        }
        Ok(client)
    }

    pub fn num_devices(&self) -> usize {
        self.devices.len()
    }

    /// The plugin's PJRT API version.
    pub fn plugin_version(&self) -> (i32, i32) {
        self.plugin.version
    }

    /// `cpu`, `tpu`, ...
    pub fn platform_name(&self) -> Result<String> {
        let mut a = ffi::PJRT_Client_PlatformName_Args::new();
        a.client = self.raw;
        self.plugin
            .call(F::CLIENT_PLATFORM_NAME, "PJRT_Client_PlatformName", &mut a)?;
        if a.platform_name.is_null() {
            return Ok(String::new());
        }
        // SAFETY: the plugin returned a string of this size, owned by the client.
        let bytes = unsafe {
            std::slice::from_raw_parts(a.platform_name as *const u8, a.platform_name_size)
        };
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn device(&self, ordinal: usize) -> Result<*mut ffi::PJRT_Device> {
        self.devices.get(ordinal).copied().ok_or_else(|| {
            err(format!(
                "device {ordinal} does not exist; the plugin has {}",
                self.devices.len()
            ))
        })
    }

    /// Copies `data` (little-endian elements of `dtype`, row-major `dims`) to
    /// device `ordinal`; returns when the host bytes are no longer needed.
    pub fn upload(
        &self,
        data: &[u8],
        dtype: DType,
        dims: &[usize],
        ordinal: usize,
    ) -> Result<Buffer> {
        let elems: usize = dims.iter().product();
        if elems * dtype.size() != data.len() {
            return Err(err(format!(
                "upload of {} bytes as {dtype} {dims:?} ({} bytes expected)",
                data.len(),
                elems * dtype.size()
            )));
        }
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let mut a = ffi::PJRT_Client_BufferFromHostBuffer_Args::new();
        a.client = self.raw;
        a.data = data.as_ptr() as *const c_void;
        a.type_ = buffer_type(dtype);
        a.dims = dims.as_ptr();
        a.num_dims = dims.len();
        a.host_buffer_semantics = ffi::HOST_BUFFER_IMMUTABLE_UNTIL_TRANSFER_COMPLETES;
        a.device = self.device(ordinal)?;
        self.plugin.call(
            F::CLIENT_BUFFER_FROM_HOST_BUFFER,
            "PJRT_Client_BufferFromHostBuffer",
            &mut a,
        )?;
        let buffer = Buffer {
            plugin: self.plugin.clone(),
            raw: a.buffer,
        };
        // `data` must outlive the transfer: wait for it before returning.
        self.plugin
            .await_event(a.done_with_host_buffer, "uploading a buffer")?;
        Ok(buffer)
    }

    /// Compiles a StableHLO module (MLIR text) for one device.
    pub fn compile(&self, mlir: &str) -> Result<Executable> {
        let format = "mlir";
        let mut program = ffi::PJRT_Program::new();
        program.code = mlir.as_ptr() as *mut _;
        program.code_size = mlir.len();
        program.format = format.as_ptr() as *const _;
        program.format_size = format.len();
        let mut a = ffi::PJRT_Client_Compile_Args::new();
        a.client = self.raw;
        a.program = &program;
        a.compile_options = COMPILE_OPTIONS.as_ptr() as *const _;
        a.compile_options_size = COMPILE_OPTIONS.len();
        self.plugin
            .call(F::CLIENT_COMPILE, "PJRT_Client_Compile", &mut a)?;
        Executable::wrap(self.plugin.clone(), a.executable)
    }
}

impl Client {
    /// Loads an executable `Executable::serialize` wrote (same plugin version).
    pub fn load_serialized(&self, bytes: &[u8]) -> Result<Executable> {
        let mut a = ffi::PJRT_Executable_DeserializeAndLoad_Args::new();
        a.client = self.raw;
        a.serialized_executable = bytes.as_ptr() as *const _;
        a.serialized_executable_size = bytes.len();
        self.plugin.call(
            F::EXECUTABLE_DESERIALIZE_AND_LOAD,
            "PJRT_Executable_DeserializeAndLoad",
            &mut a,
        )?;
        Executable::wrap(self.plugin.clone(), a.loaded_executable)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_Client_Destroy_Args::new();
        a.client = self.raw;
        let _ = self
            .plugin
            .call(F::CLIENT_DESTROY, "PJRT_Client_Destroy", &mut a);
    }
}

/// An array on a device.
pub struct Buffer {
    plugin: Arc<Plugin>,
    raw: *mut ffi::PJRT_Buffer,
}

// SAFETY: PJRT buffers are thread-safe by contract.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Buffer {
    pub fn dims(&self) -> Result<Vec<usize>> {
        let mut a = ffi::PJRT_Buffer_Dimensions_Args::new();
        a.buffer = self.raw;
        self.plugin
            .call(F::BUFFER_DIMENSIONS, "PJRT_Buffer_Dimensions", &mut a)?;
        if a.dims.is_null() {
            return Ok(vec![]);
        }
        // SAFETY: the plugin returned this many dims, owned by the buffer.
        let dims = unsafe { std::slice::from_raw_parts(a.dims, a.num_dims) };
        Ok(dims.iter().map(|&d| d.max(0) as usize).collect())
    }

    pub fn dtype(&self) -> Result<DType> {
        let mut a = ffi::PJRT_Buffer_ElementType_Args::new();
        a.buffer = self.raw;
        self.plugin
            .call(F::BUFFER_ELEMENT_TYPE, "PJRT_Buffer_ElementType", &mut a)?;
        dtype_of(a.type_).ok_or_else(|| err(format!("buffer of PJRT element type {}", a.type_)))
    }

    /// Whether the buffer was donated to an execution (or deleted).
    pub fn is_deleted(&self) -> Result<bool> {
        let mut a = ffi::PJRT_Buffer_IsDeleted_Args::new();
        a.buffer = self.raw;
        self.plugin
            .call(F::BUFFER_IS_DELETED, "PJRT_Buffer_IsDeleted", &mut a)?;
        Ok(a.is_deleted)
    }

    /// Copies the whole buffer into `dst`, which must be exactly its size.
    pub fn download(&self, dst: &mut [u8]) -> Result<()> {
        let elems: usize = self.dims()?.iter().product();
        let want = elems * self.dtype()?.size();
        if dst.len() != want {
            return Err(err(format!(
                "download into {} bytes from a buffer of {want}",
                dst.len()
            )));
        }
        let mut a = ffi::PJRT_Buffer_ToHostBuffer_Args::new();
        a.src = self.raw;
        a.dst = dst.as_mut_ptr() as *mut c_void;
        a.dst_size = dst.len();
        self.plugin
            .call(F::BUFFER_TO_HOST_BUFFER, "PJRT_Buffer_ToHostBuffer", &mut a)?;
        self.plugin.await_event(a.event, "downloading a buffer")
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_Buffer_Destroy_Args::new();
        a.buffer = self.raw;
        let _ = self
            .plugin
            .call(F::BUFFER_DESTROY, "PJRT_Buffer_Destroy", &mut a);
    }
}

/// A compiled program, loaded on its device.
pub struct Executable {
    plugin: Arc<Plugin>,
    raw: *mut ffi::PJRT_LoadedExecutable,
    num_outputs: usize,
}

// SAFETY: PJRT executables are thread-safe by contract.
unsafe impl Send for Executable {}
unsafe impl Sync for Executable {}

impl Executable {
    /// Owns a loaded executable the plugin returned and reads its output count.
    fn wrap(plugin: Arc<Plugin>, raw: *mut ffi::PJRT_LoadedExecutable) -> Result<Executable> {
        let mut exe = Executable {
            plugin,
            raw,
            num_outputs: 0,
        };
        exe.num_outputs = exe.with_program(|program| {
            let mut n = ffi::PJRT_Executable_NumOutputs_Args::new();
            n.executable = program;
            exe.plugin
                .call(
                    F::EXECUTABLE_NUM_OUTPUTS,
                    "PJRT_Executable_NumOutputs",
                    &mut n,
                )
                .map(|()| n.num_outputs)
        })?;
        Ok(exe)
    }

    /// Runs `f` on the executable's compiled program (a handle the plugin
    /// makes on request and that must be destroyed after use).
    fn with_program<T>(&self, f: impl FnOnce(*mut ffi::PJRT_Executable) -> Result<T>) -> Result<T> {
        let mut g = ffi::PJRT_LoadedExecutable_GetExecutable_Args::new();
        g.loaded_executable = self.raw;
        self.plugin.call(
            F::LOADED_EXECUTABLE_GET_EXECUTABLE,
            "PJRT_LoadedExecutable_GetExecutable",
            &mut g,
        )?;
        let result = f(g.executable);
        let mut d = ffi::PJRT_Executable_Destroy_Args::new();
        d.executable = g.executable;
        self.plugin
            .call(F::EXECUTABLE_DESTROY, "PJRT_Executable_Destroy", &mut d)?;
        result
    }

    pub fn num_outputs(&self) -> usize {
        self.num_outputs
    }

    /// The compiled program as bytes, for an on-disk cache.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        self.with_program(|program| {
            let mut a = ffi::PJRT_Executable_Serialize_Args::new();
            a.executable = program;
            let done =
                self.plugin
                    .call(F::EXECUTABLE_SERIALIZE, "PJRT_Executable_Serialize", &mut a);
            let bytes = if done.is_ok() && !a.serialized_bytes.is_null() {
                // SAFETY: the plugin returned this many bytes, valid until the deleter runs.
                unsafe {
                    std::slice::from_raw_parts(
                        a.serialized_bytes as *const u8,
                        a.serialized_bytes_size,
                    )
                }
                .to_vec()
            } else {
                vec![]
            };
            if !a.serialized_executable_deleter.is_null() {
                // SAFETY: the deleter has this signature and takes the object it came with.
                unsafe {
                    let del: unsafe extern "C" fn(*mut c_void) =
                        std::mem::transmute(a.serialized_executable_deleter);
                    del(a.serialized_executable);
                }
            }
            done.map(|()| bytes)
        })
    }

    /// Runs once on the executable's device and waits for it. Arguments the
    /// program donates (`tf.aliasing_output`) are consumed: their buffers
    /// report `is_deleted` afterwards and the matching output takes their memory.
    pub fn execute(&self, args: &[&Buffer]) -> Result<Vec<Buffer>> {
        let arg_ptrs: Vec<*mut ffi::PJRT_Buffer> = args.iter().map(|b| b.raw).collect();
        let arg_list: *const *mut ffi::PJRT_Buffer = arg_ptrs.as_ptr();
        let mut outs: Vec<*mut ffi::PJRT_Buffer> = vec![std::ptr::null_mut(); self.num_outputs];
        let out_list: *mut *mut ffi::PJRT_Buffer = outs.as_mut_ptr();
        let mut event: *mut ffi::PJRT_Event = std::ptr::null_mut();
        let mut options = ffi::PJRT_ExecuteOptions::new();
        let mut a = ffi::PJRT_LoadedExecutable_Execute_Args::new();
        a.executable = self.raw;
        a.options = &mut options;
        a.argument_lists = &arg_list;
        a.num_devices = 1;
        a.num_args = arg_ptrs.len();
        a.output_lists = &out_list;
        a.device_complete_events = &mut event;
        self.plugin.call(
            F::LOADED_EXECUTABLE_EXECUTE,
            "PJRT_LoadedExecutable_Execute",
            &mut a,
        )?;
        // Own the outputs first, so they are freed even if the wait fails.
        let outputs: Vec<Buffer> = outs
            .into_iter()
            .filter(|p| !p.is_null())
            .map(|raw| Buffer {
                plugin: self.plugin.clone(),
                raw,
            })
            .collect();
        self.plugin.await_event(event, "executing")?;
        if outputs.len() != self.num_outputs {
            return Err(err(format!(
                "execution returned {} outputs, the program has {}",
                outputs.len(),
                self.num_outputs
            )));
        }
        Ok(outputs)
    }
}

impl Drop for Executable {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_LoadedExecutable_Destroy_Args::new();
        a.executable = self.raw;
        let _ = self.plugin.call(
            F::LOADED_EXECUTABLE_DESTROY,
            "PJRT_LoadedExecutable_Destroy",
            &mut a,
        );
    }
}
