//! `/metrics` in Prometheus' text format: requests by endpoint and status,
//! token counters, the engine's gauges, and latency histograms.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;
use tessera_core::engine::EngineGauges;

/// Upper bounds (seconds) shared by the latency histograms.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (c, &le) in self.counts.iter_mut().zip(BUCKETS) {
            if seconds <= le {
                *c += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    prompt_tokens: u64,
    generation_tokens: u64,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
}

#[derive(Default)]
pub struct Metrics(Mutex<Inner>);

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        // A poisoned lock only means a panic elsewhere mid-update; counts stay usable.
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn request(&self, endpoint: &str, status: u16) {
        self.with(|m| {
            *m.requests
                .entry((endpoint.to_string(), status))
                .or_default() += 1
        });
    }
    pub fn prompt_tokens(&self, n: usize) {
        self.with(|m| m.prompt_tokens += n as u64);
    }
    pub fn generation_tokens(&self, n: usize) {
        self.with(|m| m.generation_tokens += n as u64);
    }
    pub fn ttft(&self, d: Duration) {
        self.with(|m| m.ttft.observe(d.as_secs_f64()));
    }
    pub fn itl(&self, d: Duration) {
        self.with(|m| m.itl.observe(d.as_secs_f64()));
    }
    pub fn e2e(&self, d: Duration) {
        self.with(|m| m.e2e.observe(d.as_secs_f64()));
    }

    pub fn render(&self, g: &EngineGauges) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "tessera_num_requests_running",
            "Sequences in the running batch.",
            g.running as f64,
        );
        gauge(
            &mut out,
            "tessera_num_requests_waiting",
            "Sequences waiting to be scheduled.",
            g.waiting as f64,
        );
        gauge(
            &mut out,
            "tessera_kv_blocks_used",
            "KV-cache blocks held by sequences.",
            g.blocks_used as f64,
        );
        gauge(
            &mut out,
            "tessera_kv_blocks_total",
            "KV-cache blocks in the pool.",
            g.blocks_total as f64,
        );
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        gauge(
            &mut out,
            "tessera_kv_cache_usage_ratio",
            "Share of KV-cache blocks in use.",
            ratio(g.blocks_used, g.blocks_total),
        );
        gauge(
            &mut out,
            "tessera_prefix_cache_hit_rate",
            "Prefix-cache hits over lookups since start.",
            ratio(g.prefix_hits, g.prefix_queries),
        );
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "tessera_prefix_cache_queries_total",
            "Full blocks looked up in the prefix cache.",
            g.prefix_queries,
        );
        counter(
            &mut out,
            "tessera_prefix_cache_hits_total",
            "Of those, the ones reused.",
            g.prefix_hits,
        );
        counter(
            &mut out,
            "tessera_num_preemptions_total",
            "Sequences preempted for lack of KV blocks.",
            g.preemptions,
        );
        counter(
            &mut out,
            "tessera_lora_slot_loads_total",
            "LoRA adapters written into device slots (first use and after eviction).",
            g.lora_loads,
        );
        self.with(|m| {
            counter(&mut out, "tessera_prompt_tokens_total", "Prompt tokens of accepted requests.", m.prompt_tokens);
            counter(&mut out, "tessera_generation_tokens_total", "Tokens generated.", m.generation_tokens);
            let _ = writeln!(
                out,
                "# HELP tessera_requests_total HTTP requests by endpoint and status.\n# TYPE tessera_requests_total counter"
            );
            for ((endpoint, status), n) in &m.requests {
                let _ = writeln!(out, "tessera_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
            }
            m.ttft.render(&mut out, "tessera_time_to_first_token_seconds", "Time from arrival to the first token.");
            m.itl.render(&mut out, "tessera_inter_token_latency_seconds", "Time between output chunks of a sequence.");
            m.e2e.render(&mut out, "tessera_e2e_request_latency_seconds", "Time from arrival to the last token.");
        });
        out
    }
}
