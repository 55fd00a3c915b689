//! `--mode support`: which ops a backend runs natively, which run through the
//! HAL's default composition, which it lacks; and the dtypes it claims.

use crate::ops::cases::{self, OPS, OPTIONAL_OPS};
use crate::ops::launch::{run_case, Path};
use serde::Serialize;
use tessera_core::hal::Device;
use tessera_core::{Error, Result};

#[derive(Clone, Debug, Serialize)]
pub struct OpSupport {
    pub op: String,
    pub required: bool,
    /// `native`, `composed` (the HAL default built from required ops),
    /// `lowered` (a compiling backend compiled it), `missing` or `error`.
    pub status: String,
    pub dtypes: Vec<String>,
    pub detail: String,
}

pub fn run(dev: &dyn Device) -> Result<Vec<OpSupport>> {
    let cases = cases::all(&dev.capabilities())?;
    let kernels = dev.kernels();
    let mut out = vec![];
    for &op in OPS {
        let of_op: Vec<_> = cases.iter().filter(|c| c.name() == op).collect();
        let mut dtypes: Vec<String> = of_op.iter().map(|c| c.dtype.name().to_string()).collect();
        dtypes.dedup();
        let required = !OPTIONAL_OPS.contains(&op);
        let (status, detail) = match of_op.first().map(|c| run_case(dev, c, Path::Auto)) {
            None => (
                "missing".to_string(),
                "no case for the claimed dtypes".to_string(),
            ),
            Some(Err(Error::Unsupported { what, .. })) => ("missing".into(), what),
            Some(Err(e)) => ("error".into(), e.to_string()),
            Some(Ok(_)) => match &kernels {
                None => ("lowered".into(), String::new()),
                Some(k) if required || k.native_optional_ops().contains(&op) => {
                    ("native".into(), String::new())
                }
                Some(_) => ("composed".into(), "HAL default from required ops".into()),
            },
        };
        out.push(OpSupport {
            op: op.to_string(),
            required,
            status,
            dtypes,
            detail,
        });
    }
    Ok(out)
}

pub fn print(s: &[OpSupport], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16} {:<9} {:<9} {:<16} detail",
        "op", "required", "status", "dtypes"
    )?;
    for x in s {
        writeln!(
            out,
            "{:<16} {:<9} {:<9} {:<16} {}",
            x.op,
            if x.required { "yes" } else { "optional" },
            x.status,
            x.dtypes.join(","),
            x.detail
        )?;
    }
    Ok(())
}
