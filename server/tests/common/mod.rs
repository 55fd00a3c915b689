//! A live `tessera serve` on 127.0.0.1 for the server tests: started on a free
//! port with a small KV cache, killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Every stderr line after the ready line, as it arrives.
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `tessera serve` with the default model and `extra` flags; waits
    /// (up to 3 minutes) for its ready line.
    pub fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "--port", "0", "--kv-cache-memory", "268435456"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split(" on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        return Server {
                            child,
                            url: format!("http://{addr}"),
                            log: rx,
                        };
                    }
                    eprintln!("server: {line}");
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("tessera serve did not become ready");
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime for a test's async client code.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An HTTP client that gives up on a hung server after 5 minutes.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// What a script of `scripts/` prints (they print the path they cached).
pub fn script_output(name: &str) -> String {
    let script = format!("{}/../scripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The directory holding the openai package (installed on first use).
pub fn openai_pythonpath() -> String {
    script_output("install-test-deps.sh")
}

/// A `tessera conformance --device DEVICE` run passed: it exited 0, its last
/// line is the PASS summary, and for each of `rows` some passing row names it.
pub fn assert_conformance_passed(o: &std::process::Output, device: &str, rows: &[&str]) {
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(&format!("conformance {device}: ")) && summary.ends_with("-> PASS"),
        "{summary}"
    );
    for name in rows {
        assert!(
            out.lines()
                .any(|l| l.contains(name) && l.contains(" pass ")),
            "no passing {name:?} row:\n{out}"
        );
    }
}

/// `device` answered the chat question (the capital of France) with Paris,
/// in exactly the words the cpu backend used.
pub fn assert_answers_like_cpu(
    device: &std::process::Output,
    cpu: &std::process::Output,
    what: &str,
) {
    let (d, c) = (
        String::from_utf8_lossy(&device.stdout),
        String::from_utf8_lossy(&cpu.stdout),
    );
    assert!(
        device.status.success(),
        "{}",
        String::from_utf8_lossy(&device.stderr)
    );
    assert!(d.contains("Paris"), "{d}");
    assert_eq!(d, c, "{what} and cpu answers differ");
}
