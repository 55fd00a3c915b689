//! tessera-gpu-kernels: the host side of our CUDA/HIP kernels
//! (`kernels/cuda/`), written once for every backend that runs them. The
//! kernels are in the subset CUDA and HIP share; NVRTC (cuda backend) or
//! hipRTC (rocm backend) compiles them. What differs between vendors (the
//! driver calls, the GEMM library) sits behind [`runtime::Runtime`];
//! [`kernels::GpuKernels`] implements the HAL's op kernels over it: shape
//! checks, argument lists, launch shapes, scratch.
//!
//! With the `emulator` feature, [`emulator`] runs the same kernel sources
//! on the CPU (g++ and fibers), as 32-lane warps or 64-lane wavefronts, so
//! the host logic and the kernels' numerics are tested on machines with no GPU.

pub mod device;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod graphs;
pub mod kernels;
pub mod launch;
pub mod runtime;
pub mod sources;
