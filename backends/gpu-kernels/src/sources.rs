//! The kernel sources, shipped inside the binary, and the cache key the
//! run-time compilers (NVRTC, hipRTC) file their output under.

/// The compat header every kernel file includes, as the compilers see it.
pub const COMPAT_H: &str = include_str!("../../../kernels/cuda/compat.h");

/// Every kernel file, by name.
pub const SOURCES: &[(&str, &str)] = &[
    (
        "embedding.cu",
        include_str!("../../../kernels/cuda/embedding.cu"),
    ),
    ("norm.cu", include_str!("../../../kernels/cuda/norm.cu")),
    ("rope.cu", include_str!("../../../kernels/cuda/rope.cu")),
    (
        "elementwise.cu",
        include_str!("../../../kernels/cuda/elementwise.cu"),
    ),
    (
        "kv_write.cu",
        include_str!("../../../kernels/cuda/kv_write.cu"),
    ),
    (
        "attention.cu",
        include_str!("../../../kernels/cuda/attention.cu"),
    ),
    ("select.cu", include_str!("../../../kernels/cuda/select.cu")),
    ("gemv.cu", include_str!("../../../kernels/cuda/gemv.cu")),
    ("lora.cu", include_str!("../../../kernels/cuda/lora.cu")),
];

/// FNV-1a over `parts`: a stable hash for on-disk cache keys (std's hasher
/// may change between releases). Callers pass the source, the compat
/// header, the target architecture, the compiler's version and its options,
/// so a change in any of them compiles afresh.
pub fn cache_key(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file; a cache that cannot be written only
/// costs a recompile next time, so failures are logged by the caller.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Unique per process and call: two threads may cache the same entry.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_separates_parts_and_is_stable() {
        assert_ne!(cache_key(&["ab", "c"]), cache_key(&["a", "bc"]));
        // FNV-1a of "a" then the 0xff separator, fixed across releases.
        assert_eq!(cache_key(&["a"]), {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in [b'a', 0xff] {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h
        });
    }

    #[test]
    fn every_source_includes_only_compat_h() {
        for (name, src) in SOURCES {
            let includes: Vec<&str> = src
                .lines()
                .filter(|l| l.trim_start().starts_with("#include"))
                .collect();
            assert_eq!(includes, ["#include \"compat.h\""], "{name}");
        }
    }
}
