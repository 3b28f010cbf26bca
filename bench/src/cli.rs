//! Command line and the run's sizes (full or `--quick`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Side-by-side benchmark of civic-sidecar, nginx and the upstream reached directly, plus the
/// token cache and the webhook handler. Writes `target/bench/latest.json` (and `.md`).
#[derive(Debug, Clone, Parser)]
#[command(name = "civic-bench", version)]
pub struct Cli {
    /// Smoke run (about 2 minutes): one repetition, short phases, shorter outage.
    #[arg(long)]
    pub quick: bool,

    /// Repetitions of each throughput and latency measurement (default 3, 1 with --quick).
    #[arg(long)]
    pub reps: Option<usize>,

    /// The civic-sidecar binary (default: next to this one).
    #[arg(long, env = "CIVIC_SIDECAR_BIN")]
    pub sidecar_bin: Option<PathBuf>,

    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,

    /// The wrk binary.
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,

    /// Pin nginx and the sidecar to these CPUs with taskset (e.g. `1`); default: no pinning,
    /// the same budget by threads (one nginx worker, CIVIC_WORKER_THREADS=1).
    #[arg(long)]
    pub pin_cpu: Option<String>,

    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,

    /// Scenarios to run, comma-separated: proxy, memory, memory-h2, tokens, webhook, wan
    /// (default: all; `memory` includes `memory-h2`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,

    /// Where the JSON goes (default: target/bench/latest.json; a `.md` table goes beside it).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl Cli {
    pub fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

/// Durations and counts of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    pub reps: usize,
    pub wrk_connections: usize,
    #[serde(serialize_with = "crate::stats::secs")]
    pub wrk_warmup: Duration,
    #[serde(serialize_with = "crate::stats::secs")]
    pub wrk_duration: Duration,
    pub latency_rate: f64,
    pub latency_connections: usize,
    #[serde(serialize_with = "crate::stats::secs")]
    pub latency_warmup: Duration,
    #[serde(serialize_with = "crate::stats::secs")]
    pub latency_duration: Duration,
    pub memory_cycles: usize,
    #[serde(serialize_with = "crate::stats::secs")]
    pub memory_load: Duration,
    pub large_clients: usize,
    pub large_bytes: usize,
    #[serde(serialize_with = "crate::stats::secs")]
    pub large_duration: Duration,
    pub sse_streams: usize,
    pub sse_events: u64,
    #[serde(serialize_with = "crate::stats::secs")]
    pub sse_every: Duration,
    pub cold_callers: usize,
    #[serde(serialize_with = "crate::stats::secs")]
    pub cold_exchange_delay: Duration,
    pub refresh_token_ttl: u64,
    #[serde(serialize_with = "crate::stats::secs")]
    pub refresh_exchange_delay: Duration,
    pub refresh_rate: f64,
    #[serde(serialize_with = "crate::stats::secs")]
    pub refresh_duration: Duration,
    #[serde(serialize_with = "crate::stats::secs")]
    pub refresh_threshold: Duration,
    pub outage_token_ttl: u64,
    #[serde(serialize_with = "crate::stats::secs")]
    pub outage: Duration,
    pub outage_rate: f64,
    #[serde(serialize_with = "crate::stats::secs")]
    pub outage_recovery_window: Duration,
    pub webhook_iterations: usize,
    /// Timed tool calls per cell of the `wan` scenario, after `wan_warmup` untimed ones.
    pub wan_calls: usize,
    pub wan_warmup: usize,
}

impl Plan {
    pub fn new(cli: &Cli) -> Self {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let quick = cli.quick;
        Self {
            quick,
            reps: cli.reps.unwrap_or(if quick { 1 } else { 3 }).max(1),
            wrk_connections: cli.connections.max(1),
            wrk_warmup: s(1),
            wrk_duration: if quick { s(2) } else { s(5) },
            latency_rate: 1000.0,
            latency_connections: 4,
            latency_warmup: if quick { ms(300) } else { ms(500) },
            latency_duration: if quick { s(2) } else { s(5) },
            memory_cycles: 3,
            memory_load: if quick { s(1) } else { s(3) },
            large_clients: 50,
            large_bytes: 1 << 20,
            large_duration: if quick { s(1) } else { s(3) },
            sse_streams: 1000,
            sse_events: if quick { 3 } else { 6 },
            sse_every: if quick { ms(300) } else { ms(500) },
            cold_callers: 1000,
            cold_exchange_delay: ms(300),
            // Reused until ttl − ttl/2, refreshed a third of that ahead: 6 s → refresh at 2 s,
            // unusable at 3 s; a 500 ms exchange finishes with the old token still valid.
            refresh_token_ttl: 6,
            refresh_exchange_delay: ms(500),
            refresh_rate: 500.0,
            refresh_duration: if quick { s(7) } else { s(12) },
            refresh_threshold: ms(100),
            // 20 s → refresh attempts from 6.7 s, unusable at 10 s: most of the outage runs
            // without a token, where only the backoff limits attempts.
            outage_token_ttl: if quick { 6 } else { 20 },
            outage: if quick { s(10) } else { s(30) },
            outage_rate: 200.0,
            outage_recovery_window: if quick { s(5) } else { s(10) },
            webhook_iterations: if quick { 5_000 } else { 20_000 },
            wan_calls: if quick { 15 } else { 40 },
            wan_warmup: if quick { 3 } else { 5 },
        }
    }
}
