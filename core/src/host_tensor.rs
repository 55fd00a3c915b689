//! A tensor in host memory: weights on their way to a device, inputs, outputs.

use crate::{DType, Error, Result};
use half::{bf16, f16};

#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I32(Vec<i32>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor {
            shape,
            data: HostData::F32(data),
        }
    }

    pub fn i32(shape: Vec<usize>, data: Vec<i32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor {
            shape,
            data: HostData::I32(data),
        }
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            HostData::F32(_) => DType::F32,
            HostData::BF16(_) => DType::BF16,
            HostData::F16(_) => DType::F16,
            HostData::I32(_) => DType::I32,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The raw little-endian bytes, as a device upload wants them.
    pub fn as_bytes(&self) -> &[u8] {
        fn bytes<T>(v: &[T]) -> &[u8] {
            // SAFETY: f32, i32, bf16 and f16 are plain old data without padding.
            unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
        }
        match &self.data {
            HostData::F32(v) => bytes(v),
            HostData::BF16(v) => bytes(v),
            HostData::F16(v) => bytes(v),
            HostData::I32(v) => bytes(v),
        }
    }

    /// Builds a tensor of `dtype` from raw little-endian bytes.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, raw: &[u8]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if raw.len() != n * dtype.size() {
            return Err(Error::invalid(format!(
                "{} bytes cannot hold a {dtype} tensor of shape {shape:?}",
                raw.len()
            )));
        }
        let data = match dtype {
            DType::F32 => HostData::F32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            DType::I32 => HostData::I32(
                raw.chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            DType::BF16 => HostData::BF16(
                raw.chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            DType::F16 => HostData::F16(
                raw.chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
        };
        Ok(HostTensor { shape, data })
    }

    /// The values widened to f32 (exact for every float dtype).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostData::I32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Converts to `dtype` (round-to-nearest-even for narrowing float casts).
    pub fn to_dtype(self, dtype: DType) -> Result<Self> {
        if self.dtype() == dtype {
            return Ok(self);
        }
        if !dtype.is_float() || !self.dtype().is_float() {
            return Err(Error::invalid(format!(
                "cannot convert a {} tensor to {dtype}",
                self.dtype()
            )));
        }
        let shape = self.shape;
        let data = match (self.data, dtype) {
            (HostData::F32(v), DType::BF16) => {
                HostData::BF16(v.into_iter().map(bf16::from_f32).collect())
            }
            (HostData::F32(v), DType::F16) => {
                HostData::F16(v.into_iter().map(f16::from_f32).collect())
            }
            (data, target) => {
                let v = HostTensor {
                    shape: vec![],
                    data,
                }
                .to_f32_vec();
                match target {
                    DType::F32 => HostData::F32(v),
                    DType::BF16 => HostData::BF16(v.into_iter().map(bf16::from_f32).collect()),
                    DType::F16 => HostData::F16(v.into_iter().map(f16::from_f32).collect()),
                    DType::I32 => unreachable!("checked above"),
                }
            }
        };
        Ok(HostTensor { shape, data })
    }
}
