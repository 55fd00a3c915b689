//! The vendor guide, followed literally: every ```sh block of
//! docs/adding-a-backend.md runs, in order, on a copy of this repository. The
//! copy of the reference backend must then be listed by `tessera devices` and
//! pass the suite (its cargo tests and `tessera conformance`).
//!
//! The copy builds in its own target directory under cargo's test tmpdir, kept
//! between runs so later runs are incremental.

use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        // Build outputs, git data and benchmark results are not part of a checkout.
        if matches!(name.to_str(), Some("target" | ".git" | "bench-results")) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type()?.is_dir() {
            copy_tree(&src, &dst)?;
        } else if entry.file_type()?.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// The ```sh blocks of a markdown file, in order.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let (mut blocks, mut current): (Vec<String>, Option<String>) = (vec![], None);
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```sh" => current = Some(String::new()),
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_vendor_guide_gives_a_listed_backend_that_passes_the_suite() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(repo.join("docs/adding-a-backend.md")).expect("guide");
    let blocks = shell_blocks(&guide);
    assert!(blocks.len() >= 4, "the guide lost its shell steps");

    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vendor-kit");
    let ws = work.join("ws");
    if ws.exists() {
        std::fs::remove_dir_all(&ws).expect("clear the old copy");
    }
    copy_tree(&repo, &ws).expect("copy the repository");

    // The same cargo that runs this test, offline: the copy needs no new crates.
    let cargo = PathBuf::from(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = cargo.parent() {
        let mut p = dir.as_os_str().to_owned();
        p.push(":");
        p.push(&path);
        path = p;
    }
    let mut log = String::new();
    for (i, block) in blocks.iter().enumerate() {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .current_dir(&ws)
            .env("PATH", &path)
            .env("CARGO_TARGET_DIR", work.join("target"))
            .env("CARGO_NET_OFFLINE", "true")
            .env_remove("RUSTFLAGS")
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "step {} of the guide failed:\n{block}\n--- stdout\n{stdout}\n--- stderr\n{}",
            i + 1,
            stderr
                .chars()
                .rev()
                .take(6000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        );
        log.push_str(&stdout);
    }
    let listed = log
        .lines()
        .any(|l| l.starts_with("acme ") && l.contains("available"));
    assert!(
        listed,
        "tessera devices does not list acme as available:\n{log}"
    );
    assert!(
        log.contains("conformance acme:") && log.contains("-> PASS"),
        "tessera conformance --device acme did not pass:\n{log}"
    );
    assert!(
        log.contains("test conformance_ops ... ok") || log.contains("test result: ok. 3 passed"),
        "the backend_suite! tests did not run:\n{log}"
    );
}
