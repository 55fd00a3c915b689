//! The `tessera` binary.

mod bench;
mod bench_serve;
mod conformance;
mod devices;
mod generate;
mod serve;
mod session;
mod sse;
mod throughput;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// Linking a backend crate registers it; naming something in it makes sure the
// linker keeps it. A new backend adds its line here (docs/adding-a-backend.md).
const LINKED_BACKENDS: &[&str] = &[
    tessera_cpu::BACKEND_NAME,
    tessera_cuda::BACKEND_NAME,
    tessera_gaudi::BACKEND_NAME,
    tessera_reference::BACKEND_NAME,
    tessera_rocm::BACKEND_NAME,
    tessera_tpu::BACKEND_NAME,
];

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Serve large language models on any accelerator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt and stream it to stdout.
    Generate(generate::Args),
    /// List every backend and whether it found a device.
    Devices(devices::Args),
    /// Measure speed; prints a table and writes JSON.
    #[command(subcommand)]
    Bench(bench::Command),
    /// Check a backend against the f64 reference and golden outputs.
    Conformance(conformance::Args),
    /// Serve the OpenAI-compatible HTTP API (completions, chat, streaming, metrics).
    Serve(serve::ServeArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first} (see `tessera --help`)");
            return ExitCode::from(2);
        }
    };
    init_logging();
    tracing::debug!("linked backends: {LINKED_BACKENDS:?}");
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Devices(a) => devices::run(a),
        Command::Bench(c) => bench::run(c),
        Command::Conformance(a) => conformance::run_cli(a),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
