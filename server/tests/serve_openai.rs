//! A live `tessera serve` (default model, 127.0.0.1) driven by the official
//! `openai` Python package: chat and completions, streamed and not, n=2,
//! logprobs, stop strings, seeds, usage that matches the tokenizer, typed
//! errors (server/tests/openai_client.py).

mod common;

#[test]
fn the_official_openai_client_works() {
    let pythonpath = common::openai_pythonpath();
    let server = common::Server::start(&["--api-key", "sk-test"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([&server.url, "sk-test"])
        .env("PYTHONPATH", &pythonpath)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "openai_client.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
}
