//! `tessera devices`: every registered backend and what its probe found.

use tessera_core::hal::{backends, Probe};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    backend: &'static str,
    description: &'static str,
    available: bool,
    #[serde(flatten)]
    probe: Probe,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rows: Vec<Row> = backends()
        .into_iter()
        .map(|b| {
            let probe = (b.probe)();
            Row {
                backend: b.name,
                description: b.description,
                available: probe.available(),
                probe,
            }
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<10} {:<11} {:<6} DETAIL", "BACKEND", "STATUS", "SCORE");
    for r in &rows {
        let status = if r.available {
            "available"
        } else {
            "unavailable"
        };
        let detail = if r.available {
            r.probe
                .devices
                .iter()
                .map(|d| match d.memory_bytes {
                    Some(m) => format!(
                        "{} ({:.1} GiB, {})",
                        d.name,
                        m as f64 / (1u64 << 30) as f64,
                        d.detail
                    ),
                    None => format!("{} ({})", d.name, d.detail),
                })
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            r.probe.reason.clone().unwrap_or_default()
        };
        println!(
            "{:<10} {:<11} {:<6} {}",
            r.backend, status, r.probe.score, detail
        );
    }
    Ok(())
}
