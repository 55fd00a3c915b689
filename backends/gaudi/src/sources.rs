//! The kernels, shipped in the binary: the OpenCL C sources (built by the
//! OpenCL runtime for its device) and the same sources compiled to SPIR-V
//! by `kernels/opencl/build-spirv.sh` (loaded by Level Zero). The SPIR-V
//! file is committed; a test rebuilds it and checks it is current and valid.

/// The kernel files in program order: common definitions first.
pub const FILES: &[(&str, &str)] = &[
    (
        "common.cl",
        include_str!("../../../kernels/opencl/common.cl"),
    ),
    (
        "embedding.cl",
        include_str!("../../../kernels/opencl/embedding.cl"),
    ),
    ("norm.cl", include_str!("../../../kernels/opencl/norm.cl")),
    ("rope.cl", include_str!("../../../kernels/opencl/rope.cl")),
    (
        "elementwise.cl",
        include_str!("../../../kernels/opencl/elementwise.cl"),
    ),
    (
        "kv_write.cl",
        include_str!("../../../kernels/opencl/kv_write.cl"),
    ),
    (
        "attention.cl",
        include_str!("../../../kernels/opencl/attention.cl"),
    ),
    (
        "select.cl",
        include_str!("../../../kernels/opencl/select.cl"),
    ),
    ("gemv.cl", include_str!("../../../kernels/opencl/gemv.cl")),
    ("lora.cl", include_str!("../../../kernels/opencl/lora.cl")),
    (
        "matmul.cl",
        include_str!("../../../kernels/opencl/matmul.cl"),
    ),
];

/// `FILES` as one OpenCL C program, each file marked with `#line` so that
/// build logs name the file and line.
pub fn opencl_source() -> String {
    let mut s = String::new();
    for (name, text) in FILES {
        s.push_str(&format!("#line 1 \"{name}\"\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}

/// The program as SPIR-V (1.4, as llvm-spirv-15 writes it) for Level Zero.
pub static SPIRV: &[u8] = include_bytes!("../../../kernels/opencl/tessera.spv");

/// Kernels the OpenCL program has beyond the shared host's (`kernel_names`):
/// the GEMM, which Level Zero and OpenCL have no vendor library for here,
/// tiled and with sub-groups (those only where the device has sub-groups,
/// but always in the SPIR-V).
pub const EXTRA_KERNELS: &[&str] = &[
    "matmul_f32",
    "matmul_bf16",
    "matmul_f32_sg",
    "matmul_bf16_sg",
];
