//! The subset of the PJRT C API (`pjrt_c_api.h`, API 0.81, from the
//! `xla-cpu-pjrt` wheel) that tessera calls, written by hand from the header.
//!
//! Every call takes one `*_Args` struct whose first field is its size: the
//! header defines it as the offset of the struct's last field plus that
//! field's size, and a plugin refuses a struct smaller than its own. The
//! function table (`PJRT_Api`) is read by position: `fn_index` lists the
//! positions of the functions used, counted in the header's `PJRT_Api` (the
//! `_PJRT_API_STRUCT_FIELD` lines, from 0).

#![allow(non_camel_case_types, dead_code)]

use std::ffi::{c_char, c_void};

/// Opaque handles owned by the plugin.
pub enum PJRT_Error {}
pub enum PJRT_Client {}
pub enum PJRT_Device {}
pub enum PJRT_Buffer {}
pub enum PJRT_Event {}
pub enum PJRT_LoadedExecutable {}
pub enum PJRT_Executable {}

/// Positions in `PJRT_Api`'s function table.
pub mod fn_index {
    pub const ERROR_DESTROY: usize = 0;
    pub const ERROR_MESSAGE: usize = 1;
    pub const ERROR_GET_CODE: usize = 2;
    pub const PLUGIN_INITIALIZE: usize = 3;
    pub const EVENT_DESTROY: usize = 5;
    pub const EVENT_AWAIT: usize = 8;
    pub const CLIENT_CREATE: usize = 10;
    pub const CLIENT_DESTROY: usize = 11;
    pub const CLIENT_PLATFORM_NAME: usize = 12;
    pub const CLIENT_ADDRESSABLE_DEVICES: usize = 16;
    pub const CLIENT_COMPILE: usize = 20;
    pub const CLIENT_BUFFER_FROM_HOST_BUFFER: usize = 22;
    pub const EXECUTABLE_DESTROY: usize = 40;
    pub const EXECUTABLE_NUM_OUTPUTS: usize = 44;
    pub const EXECUTABLE_SERIALIZE: usize = 49;
    pub const LOADED_EXECUTABLE_DESTROY: usize = 50;
    pub const LOADED_EXECUTABLE_GET_EXECUTABLE: usize = 51;
    pub const LOADED_EXECUTABLE_EXECUTE: usize = 55;
    pub const EXECUTABLE_DESERIALIZE_AND_LOAD: usize = 56;
    pub const BUFFER_DESTROY: usize = 58;
    pub const BUFFER_ELEMENT_TYPE: usize = 59;
    pub const BUFFER_DIMENSIONS: usize = 60;
    pub const BUFFER_IS_DELETED: usize = 68;
    pub const BUFFER_TO_HOST_BUFFER: usize = 70;
    /// Entries tessera needs the table to have.
    pub const NEEDED: usize = BUFFER_TO_HOST_BUFFER + 1;
}

#[repr(C)]
pub struct PJRT_Api_Version {
    pub struct_size: usize,
    pub extension_start: *mut c_void,
    pub major_version: i32,
    pub minor_version: i32,
}

/// `PJRT_Api`: its header, then function pointers (read by position).
#[repr(C)]
pub struct PJRT_Api {
    pub struct_size: usize,
    pub extension_start: *mut c_void,
    pub pjrt_api_version: PJRT_Api_Version,
    pub functions: [*const c_void; fn_index::NEEDED],
}

/// Byte offset of the function table in `PJRT_Api`.
pub const FUNCTIONS_OFFSET: usize = std::mem::offset_of!(PJRT_Api, functions);

/// Every API function but the two error ones: `PJRT_Error* f(Args*)`.
pub type ApiFn = unsafe extern "C" fn(*mut c_void) -> *mut PJRT_Error;
/// `PJRT_Error_Destroy` and `PJRT_Error_Message`: `void f(Args*)`.
pub type VoidFn = unsafe extern "C" fn(*mut c_void);
/// `const PJRT_Api* GetPjrtApi(void)`, the plugin's one exported symbol.
pub type GetPjrtApi = unsafe extern "C" fn() -> *const PJRT_Api;

/// `PJRT_Buffer_Type` values tessera uses.
pub const BUFFER_TYPE_S32: i32 = 4;
pub const BUFFER_TYPE_F16: i32 = 10;
pub const BUFFER_TYPE_F32: i32 = 11;
pub const BUFFER_TYPE_BF16: i32 = 13;
/// `PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes`.
pub const HOST_BUFFER_IMMUTABLE_UNTIL_TRANSFER_COMPLETES: i32 = 1;

/// Declares an args struct (after `struct_size` and `extension_start`) and
/// `new()`, which zeroes it and sets the size the header defines.
macro_rules! args {
    ($name:ident, last = $last:ident: $last_ty:ty, { $($field:ident: $ty:ty,)* }) => {
        #[repr(C)]
        pub struct $name {
            pub struct_size: usize,
            pub extension_start: *mut c_void,
            $(pub $field: $ty,)*
        }
        impl $name {
            pub fn new() -> Self {
                // SAFETY: every field is an integer, a bool or a raw pointer, for
                // which all-zero bytes are a valid value (0, false, null).
                let mut a: Self = unsafe { std::mem::zeroed() };
                a.struct_size = std::mem::offset_of!($name, $last) + std::mem::size_of::<$last_ty>();
                a
            }
        }
    };
}

args!(PJRT_Error_Destroy_Args, last = error: *mut PJRT_Error, {
    error: *mut PJRT_Error,
});
args!(PJRT_Error_Message_Args, last = message_size: usize, {
    error: *const PJRT_Error,
    message: *const c_char,
    message_size: usize,
});
args!(PJRT_Error_GetCode_Args, last = code: i32, {
    error: *const PJRT_Error,
    code: i32,
});
args!(PJRT_Plugin_Initialize_Args, last = extension_start: *mut c_void, {});
args!(PJRT_Event_Destroy_Args, last = event: *mut PJRT_Event, {
    event: *mut PJRT_Event,
});
args!(PJRT_Event_Await_Args, last = event: *mut PJRT_Event, {
    event: *mut PJRT_Event,
});
args!(PJRT_Client_Create_Args, last = kv_try_get_user_arg: *mut c_void, {
    create_options: *const c_void,
    num_options: usize,
    kv_get_callback: *const c_void,
    kv_get_user_arg: *mut c_void,
    kv_put_callback: *const c_void,
    kv_put_user_arg: *mut c_void,
    client: *mut PJRT_Client,
    kv_try_get_callback: *const c_void,
    kv_try_get_user_arg: *mut c_void,
});
args!(PJRT_Client_Destroy_Args, last = client: *mut PJRT_Client, {
    client: *mut PJRT_Client,
});
args!(PJRT_Client_PlatformName_Args, last = platform_name_size: usize, {
    client: *mut PJRT_Client,
    platform_name: *const c_char,
    platform_name_size: usize,
});
args!(PJRT_Client_AddressableDevices_Args, last = num_addressable_devices: usize, {
    client: *mut PJRT_Client,
    addressable_devices: *const *mut PJRT_Device,
    num_addressable_devices: usize,
});
args!(PJRT_Program, last = format_size: usize, {
    code: *mut c_char,
    code_size: usize,
    format: *const c_char,
    format_size: usize,
});
args!(PJRT_Client_Compile_Args, last = executable: *mut PJRT_LoadedExecutable, {
    client: *mut PJRT_Client,
    program: *const PJRT_Program,
    compile_options: *const c_char,
    compile_options_size: usize,
    executable: *mut PJRT_LoadedExecutable,
});
args!(PJRT_Client_BufferFromHostBuffer_Args, last = buffer: *mut PJRT_Buffer, {
    client: *mut PJRT_Client,
    data: *const c_void,
    type_: i32,
    dims: *const i64,
    num_dims: usize,
    byte_strides: *const i64,
    num_byte_strides: usize,
    host_buffer_semantics: i32,
    device: *mut PJRT_Device,
    memory: *mut c_void,
    device_layout: *mut c_void,
    done_with_host_buffer: *mut PJRT_Event,
    buffer: *mut PJRT_Buffer,
});
args!(PJRT_ExecuteOptions, last = incarnation_ids: *mut i64, {
    send_callbacks: *mut c_void,
    recv_callbacks: *mut c_void,
    num_send_ops: usize,
    num_recv_ops: usize,
    launch_id: i32,
    non_donatable_input_indices: *const i64,
    num_non_donatable_input_indices: usize,
    context: *mut c_void,
    call_location: *const c_char,
    num_tasks: usize,
    task_ids: *mut i32,
    incarnation_ids: *mut i64,
});
args!(PJRT_LoadedExecutable_Execute_Args, last = execute_device: *mut PJRT_Device, {
    executable: *mut PJRT_LoadedExecutable,
    options: *mut PJRT_ExecuteOptions,
    argument_lists: *const *const *mut PJRT_Buffer,
    num_devices: usize,
    num_args: usize,
    output_lists: *const *mut *mut PJRT_Buffer,
    device_complete_events: *mut *mut PJRT_Event,
    execute_device: *mut PJRT_Device,
});
args!(PJRT_LoadedExecutable_Destroy_Args, last = executable: *mut PJRT_LoadedExecutable, {
    executable: *mut PJRT_LoadedExecutable,
});
args!(PJRT_LoadedExecutable_GetExecutable_Args, last = executable: *mut PJRT_Executable, {
    loaded_executable: *mut PJRT_LoadedExecutable,
    executable: *mut PJRT_Executable,
});
args!(PJRT_Executable_NumOutputs_Args, last = num_outputs: usize, {
    executable: *mut PJRT_Executable,
    num_outputs: usize,
});
args!(PJRT_Executable_Destroy_Args, last = executable: *mut PJRT_Executable, {
    executable: *mut PJRT_Executable,
});
args!(PJRT_Buffer_Destroy_Args, last = buffer: *mut PJRT_Buffer, {
    buffer: *mut PJRT_Buffer,
});
args!(PJRT_Buffer_ElementType_Args, last = type_: i32, {
    buffer: *mut PJRT_Buffer,
    type_: i32,
});
args!(PJRT_Buffer_Dimensions_Args, last = num_dims: usize, {
    buffer: *mut PJRT_Buffer,
    dims: *const i64,
    num_dims: usize,
});
args!(PJRT_Buffer_IsDeleted_Args, last = is_deleted: bool, {
    buffer: *mut PJRT_Buffer,
    is_deleted: bool,
});
args!(PJRT_Buffer_ToHostBuffer_Args, last = event: *mut PJRT_Event, {
    src: *mut PJRT_Buffer,
    host_layout: *mut c_void,
    dst: *mut c_void,
    dst_size: usize,
    event: *mut PJRT_Event,
});
args!(PJRT_Executable_Serialize_Args, last = serialized_executable_deleter: *const c_void, {
    executable: *const PJRT_Executable,
    serialized_bytes: *const c_char,
    serialized_bytes_size: usize,
    serialized_executable: *mut c_void,
    serialized_executable_deleter: *const c_void,
});
args!(PJRT_Executable_DeserializeAndLoad_Args, last = overridden_serialized_compile_options_size: usize, {
    client: *mut PJRT_Client,
    serialized_executable: *const c_char,
    serialized_executable_size: usize,
    loaded_executable: *mut PJRT_LoadedExecutable,
    overridden_serialized_compile_options: *const c_char,
    overridden_serialized_compile_options_size: usize,
});
