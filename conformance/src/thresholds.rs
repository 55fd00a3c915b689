//! The pass marks: NMSE (sum (a-b)^2 / sum a^2, `a` the f64 reference) per op
//! and dtype, in one table. The same numbers are in docs/conformance.md.
//!
//! Why these values: f32 rounding alone gives NMSE near 1e-14; the f32 marks
//! leave room for other summation orders, fused multiply-adds, fast exp/tanh
//! and TF32 tensor cores (about 1e-7 for a GEMM), yet one wrong element in a
//! case (NMSE of order 1/elements >= 1e-4) fails them all. bf16 and f16 marks
//! admit kernels that round activations to the 16-bit type before a GEMM
//! (about 1e-5). Copies (embedding rows, kv_write, gather_last, add) must be
//! exact up to the storage dtype. Index outputs (argmax, sample) must pick the
//! reference's token, except between scores equal to 1e-5 relative.

use tessera_core::DType;

/// (op, dtype, NMSE limit). The dtype is that of the weights for embedding and
/// linear and the LoRA stacks, of the KV cache for kv_write and paged_attention, else of the
/// activations.
pub const THRESHOLDS: &[(&str, DType, f64)] = &[
    ("embedding", DType::F32, 1e-12),
    ("embedding", DType::BF16, 1e-12),
    ("embedding", DType::F16, 1e-12),
    ("linear", DType::F32, 1e-6),
    ("linear", DType::BF16, 1e-4),
    ("linear", DType::F16, 1e-4),
    ("lora_shrink", DType::F32, 1e-6),
    ("lora_shrink", DType::BF16, 1e-4),
    ("lora_shrink", DType::F16, 1e-4),
    ("lora_expand", DType::F32, 1e-6),
    ("lora_expand", DType::BF16, 1e-4),
    ("lora_expand", DType::F16, 1e-4),
    ("rms_norm", DType::F32, 1e-7),
    ("rms_norm", DType::BF16, 1e-4),
    ("rms_norm", DType::F16, 1e-5),
    ("add_rms_norm", DType::F32, 1e-7),
    ("add_rms_norm", DType::BF16, 1e-4),
    ("add_rms_norm", DType::F16, 1e-5),
    ("rope", DType::F32, 1e-7),
    ("rope", DType::BF16, 1e-4),
    ("rope", DType::F16, 1e-5),
    ("silu_mul", DType::F32, 1e-7),
    ("silu_mul", DType::BF16, 1e-4),
    ("silu_mul", DType::F16, 1e-5),
    ("add", DType::F32, 1e-12),
    ("add", DType::BF16, 1e-4),
    ("add", DType::F16, 1e-5),
    ("kv_write", DType::F32, 1e-12),
    ("kv_write", DType::BF16, 1e-7),
    ("kv_write", DType::F16, 1e-7),
    ("paged_attention", DType::F32, 1e-6),
    ("paged_attention", DType::BF16, 1e-4),
    ("paged_attention", DType::F16, 1e-4),
    ("gather_last", DType::F32, 1e-12),
    ("gather_last", DType::BF16, 1e-12),
    ("gather_last", DType::F16, 1e-12),
];

/// Relative score gap below which two tokens count as tied for argmax/sample.
pub const INDEX_TIE: f64 = 1e-5;

/// The NMSE limit of `op` at `dtype`, if the table has one.
pub fn nmse_limit(op: &str, dtype: DType) -> Option<f64> {
    THRESHOLDS
        .iter()
        .find(|(o, d, _)| *o == op && *d == dtype)
        .map(|t| t.2)
}

/// Limits of the models layer: logits against golden outputs made in f32.
pub fn model_logits_limit(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        _ => 2e-3,
    }
}
