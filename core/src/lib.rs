//! tessera-core: the backend-agnostic half of tessera. The HAL (`hal`) is what
//! backends implement; `model` loads weights and writes the forward pass as a
//! graph; `engine` runs requests on a device.

pub mod dtype;
pub mod engine;
pub mod error;
pub mod hal;
pub mod host_tensor;
pub mod model;

pub use dtype::DType;
pub use error::{Error, Result};
pub use host_tensor::{HostData, HostTensor};
