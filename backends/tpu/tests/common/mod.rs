//! The XLA CPU PJRT plugin the tpu tests run on (fetched once and cached).

use std::path::PathBuf;

pub fn plugin_path() -> PathBuf {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/fetch-pjrt-plugin.sh"
    );
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .expect("run scripts/fetch-pjrt-plugin.sh");
    assert!(
        out.status.success(),
        "fetch-pjrt-plugin.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
