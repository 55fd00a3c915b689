//! Helpers for the unit tests: tensors from literals, values back out.

use crate::memory::alloc;
use crate::ops::RefKernels;
use crate::tensors::{load, load_ids, store, store_ids};
use tessera_core::hal::Tensor;
use tessera_core::DType;

pub fn kernels() -> RefKernels {
    RefKernels::new(2)
}

/// A tensor of `dtype` holding `values` (rounded to the dtype).
pub fn tensor(dtype: DType, shape: &[usize], values: &[f64]) -> Tensor {
    let bytes = shape.iter().product::<usize>() * dtype.size();
    let t = Tensor::new(alloc(bytes).expect("alloc"), 0, dtype, shape.to_vec()).expect("tensor");
    store(&t, values).expect("store");
    t
}

pub fn f32s(shape: &[usize], values: &[f64]) -> Tensor {
    tensor(DType::F32, shape, values)
}

pub fn zeros(shape: &[usize]) -> Tensor {
    f32s(shape, &vec![0.0; shape.iter().product()])
}

pub fn ids(shape: &[usize], values: &[i64]) -> Tensor {
    let bytes = shape.iter().product::<usize>() * 4;
    let t =
        Tensor::new(alloc(bytes).expect("alloc"), 0, DType::I32, shape.to_vec()).expect("tensor");
    store_ids(&t, values).expect("store");
    t
}

pub fn read(t: &Tensor) -> Vec<f64> {
    load(t).expect("load")
}

pub fn read_ids(t: &Tensor) -> Vec<i64> {
    load_ids(t).expect("load")
}

/// Asserts that `got` and `want` agree to `tol` element by element.
#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "{got:?} vs {want:?}");
    }
}
