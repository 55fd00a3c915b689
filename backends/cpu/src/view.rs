//! Typed slices over tensors in host memory, checked for dtype and bounds.

use crate::device::host_memory;
use half::bf16;
use tessera_core::hal::{DeviceMemory, Tensor};
use tessera_core::{DType, Error, Result};

/// Element types a tensor can be viewed as.
pub trait Elem: Copy {
    const DTYPE: DType;
}
impl Elem for f32 {
    const DTYPE: DType = DType::F32;
}
impl Elem for i32 {
    const DTYPE: DType = DType::I32;
}
impl Elem for bf16 {
    const DTYPE: DType = DType::BF16;
}

fn raw<T: Elem>(t: &Tensor) -> Result<*mut T> {
    if t.dtype != T::DTYPE {
        return Err(Error::invalid(format!(
            "expected a {} tensor, got {}",
            T::DTYPE,
            t.dtype
        )));
    }
    let m = host_memory(&t.buffer)?;
    if t.offset + t.nbytes() > m.len() || !t.offset.is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::invalid(format!(
            "tensor {:?} at {} is out of its buffer",
            t.shape, t.offset
        )));
    }
    // SAFETY: offset checked to lie within the allocation.
    Ok(unsafe { m.ptr().add(t.offset) } as *mut T)
}

pub fn read<T: Elem>(t: &Tensor) -> Result<&[T]> {
    let p = raw::<T>(t)?;
    // SAFETY: dtype, bounds and alignment checked by `raw`; the buffer outlives `t`.
    Ok(unsafe { std::slice::from_raw_parts(p, t.numel()) })
}

/// A mutable view of an output. The interpreter guarantees that no other view
/// of the same bytes is used while an op writes it.
#[allow(clippy::mut_from_ref)]
pub fn write<T: Elem>(t: &Tensor) -> Result<&mut [T]> {
    let p = raw::<T>(t)?;
    // SAFETY: as in `read`, plus the exclusivity the interpreter guarantees.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, t.numel()) })
}

/// Float data of either dtype the CPU backend stores weights and KV in.
pub enum Floats<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
}

pub fn read_floats(t: &Tensor) -> Result<Floats<'_>> {
    match t.dtype {
        DType::F32 => Ok(Floats::F32(read(t)?)),
        DType::BF16 => Ok(Floats::BF16(read(t)?)),
        other => Err(Error::Unsupported {
            backend: "cpu".into(),
            what: format!("{other} tensors here"),
        }),
    }
}

pub fn expect(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::invalid(msg()))
    }
}
