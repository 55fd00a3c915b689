//! `tessera conformance`: the suite on one device; a table, a summary line and
//! optionally JSON. Exits non-zero when any check fails.

use anyhow::{bail, Context};
use std::io::Write;
use tessera_conformance::{check_op_name, perf, run, support, Layer, Options, REFERENCE};
use tessera_core::hal::open_device;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Compare with the reference and the golden outputs (pass/fail).
    Test,
    /// Time every op case on the device and on the reference.
    Perf,
    /// List which ops the backend runs natively.
    Support,
}

#[derive(clap::Args)]
pub struct Args {
    /// Backend to check: cpu, reference, ... (`tessera devices` lists them).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Layers to run (repeat or comma-separate): ops, models, engine. Default all.
    #[arg(long, value_delimiter = ',')]
    layer: Vec<String>,
    /// Only this op (implies --layer ops unless layers are given; perf mode too).
    #[arg(long)]
    op: Option<String>,
    #[arg(long, value_enum, default_value = "test")]
    mode: Mode,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Models layer: also compare random-weight models of real shapes
    /// (smollm2-135m, llama-3.2-1b) with this device, e.g. `cpu` (for
    /// machines without the model files).
    #[arg(long)]
    peer: Option<String>,
}

pub fn run_cli(args: Args) -> anyhow::Result<()> {
    let mut layers = args
        .layer
        .iter()
        .map(|l| {
            Layer::parse(l)
                .with_context(|| format!("unknown layer {l:?}; choose ops, models or engine"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(op) = &args.op {
        check_op_name(op)?;
        // An op filter is about the ops layer; the others have no ops to filter.
        if layers.is_empty() {
            layers.push(Layer::Ops);
        }
    }
    let mut stdout = std::io::stdout().lock();
    let json = match args.mode {
        Mode::Test => {
            let opts = Options {
                layers,
                op: args.op.clone(),
                peer: args.peer.clone(),
                ..Options::default()
            };
            let report = run(&args.device, &opts)?;
            report.print(&mut stdout)?;
            write_json(&args.json, &report.to_json())?;
            if !report.passed() {
                bail!(
                    "{} of {} checks failed on {}",
                    report.count(tessera_conformance::Status::Fail),
                    report.checks.len(),
                    args.device
                );
            }
            return Ok(());
        }
        Mode::Perf => {
            let dev = open_device(&args.device, None)?;
            let reference = open_device(REFERENCE, None)?;
            let t = perf::run(dev.as_ref(), reference.as_ref(), args.op.as_deref())?;
            perf::print(&t, &mut stdout)?;
            serde_json::to_string_pretty(&t)?
        }
        Mode::Support => {
            let dev = open_device(&args.device, None)?;
            let s = support::run(dev.as_ref())?;
            writeln!(
                stdout,
                "{} ({}): {:?}",
                args.device,
                dev.name(),
                dev.capabilities()
            )?;
            support::print(&s, &mut stdout)?;
            serde_json::to_string_pretty(&s)?
        }
    };
    write_json(&args.json, &json)
}

fn write_json(path: &Option<std::path::PathBuf>, text: &str) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
