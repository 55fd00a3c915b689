//! One row per check, one table, one summary line, and the same as JSON: what
//! a vendor publishes.

use serde::Serialize;
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Ops,
    Models,
    Engine,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::Ops, Layer::Models, Layer::Engine];

    pub fn name(self) -> &'static str {
        match self {
            Layer::Ops => "ops",
            Layer::Models => "models",
            Layer::Engine => "engine",
        }
    }

    pub fn parse(s: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not applicable to this backend (an optional op it does not have).
    Skip,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub layer: Layer,
    /// Op name, or what the check proves.
    pub name: String,
    pub dtype: String,
    /// Shape group, fixture or prompt.
    pub group: String,
    /// NMSE for numbers, mismatches for tokens; `None` where a check is yes/no.
    pub metric: Option<f64>,
    pub threshold: Option<f64>,
    pub status: Status,
    /// Why it failed, or a note.
    pub detail: String,
}

impl Check {
    /// A numeric check: passes when `metric <= threshold` (NaN fails).
    pub fn measured(
        layer: Layer,
        name: impl Into<String>,
        dtype: impl Into<String>,
        group: impl Into<String>,
        metric: f64,
        threshold: f64,
    ) -> Check {
        let ok = metric <= threshold;
        Check {
            layer,
            name: name.into(),
            dtype: dtype.into(),
            group: group.into(),
            metric: Some(metric),
            threshold: Some(threshold),
            status: if ok { Status::Pass } else { Status::Fail },
            detail: String::new(),
        }
    }

    /// A yes/no check.
    pub fn verdict(
        layer: Layer,
        name: impl Into<String>,
        dtype: impl Into<String>,
        group: impl Into<String>,
        ok: bool,
        detail: impl Into<String>,
    ) -> Check {
        Check {
            layer,
            name: name.into(),
            dtype: dtype.into(),
            group: group.into(),
            metric: None,
            threshold: None,
            status: if ok { Status::Pass } else { Status::Fail },
            detail: detail.into(),
        }
    }

    /// Marks the check failed for `why` (kept with earlier reasons).
    pub fn fail(mut self, why: impl Into<String>) -> Check {
        self.status = Status::Fail;
        let why = why.into();
        self.detail = if self.detail.is_empty() {
            why
        } else {
            format!("{}; {why}", self.detail)
        };
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Check {
        let note = note.into();
        self.detail = if self.detail.is_empty() {
            note
        } else {
            format!("{}; {note}", self.detail)
        };
        self
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub backend: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    pub fn passed(&self) -> bool {
        self.count(Status::Fail) == 0 && !self.checks.is_empty()
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    pub fn summary(&self) -> String {
        format!(
            "conformance {}: {} passed, {} failed, {} skipped ({} checks) -> {}",
            self.device,
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Skip),
            self.checks.len(),
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }

    /// The table: layer, check, dtype, group, metric, limit, status, detail.
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let w_name = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let w_group = self
            .checks
            .iter()
            .map(|c| c.group.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            out,
            "{:<6} {:<w_name$} {:<5} {:<w_group$} {:>9} {:>9} {:<4}  detail",
            "layer", "check", "dtype", "group", "metric", "limit", "ok"
        )?;
        for c in &self.checks {
            let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2e}"));
            let status = match c.status {
                Status::Pass => "pass",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            writeln!(
                out,
                "{:<6} {:<w_name$} {:<5} {:<w_group$} {:>9} {:>9} {:<4}  {}",
                c.layer.name(),
                c.name,
                c.dtype,
                c.group,
                num(c.metric),
                num(c.threshold),
                status,
                c.detail
            )?;
        }
        writeln!(out, "{}", self.summary())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
