//! civic-bench: civic-sidecar measured side by side with nginx and with the upstream reached
//! directly, in one run, plus the token cache under load and the webhook handler
//! (docs/architecture.md §7, issue 6). `scripts/bench.sh` builds and runs it.
//!
//! One run starts a loopback MCP-shaped [`upstream`] (plain and TLS), nginx and the sidecar in
//! front of it, and then the [`scenarios`]; [`report`] turns the figures into ratios from the
//! same run, marks each goal met or gap, and writes `target/bench/latest.json` and `.md`.

pub mod cli;
pub mod client;
pub mod error;
pub mod machine;
pub mod nginx;
pub mod openloop;
pub mod procfs;
pub mod report;
pub mod scenarios;
pub mod sidecar;
pub mod stats;
pub mod upstream;
pub mod wrk;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use civic_testkit::fs::TempDir;
use civic_testkit::{FakeCivicAuth, TestCa};

use crate::cli::{Cli, Plan};
use crate::error::{BenchError, Result};
use crate::report::{Machine, RECONCILE_SOURCE, Reconcile, Report};
use crate::scenarios::{Env, memory, proxy, tokens, wan, webhook};
use crate::sidecar::Launch;
use crate::upstream::Upstream;
use crate::wrk::Wrk;

/// What a workload calling the upstream directly sends (the proxies add their own).
pub const DIRECT_BEARER: &str = "Bearer direct-caller-token";
/// Runtime threads of the loopback upstream.
const UPSTREAM_THREADS: usize = 2;

/// `target/bench/latest.json`, next to the `target/<profile>/` this binary runs from.
pub fn default_out() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("bench").join("latest.json")))
        .unwrap_or_else(|| PathBuf::from("target/bench/latest.json"))
}

fn tool(name: &Path, what: &str) -> Result<PathBuf> {
    machine::find_tool(name).ok_or_else(|| {
        BenchError::Setup(format!(
            "{what} not found ({}); scripts/bench.sh installs it from Debian",
            name.display()
        ))
    })
}

/// Runs every scenario `cli` asks for and returns the evaluated report.
pub async fn run(cli: &Cli) -> Result<Report> {
    let started = Instant::now();
    let plan = Plan::new(cli);
    let load_before = machine::load_average();
    let sidecar_bin = match &cli.sidecar_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::io("locate civic-bench", e))?
            .with_file_name("civic-sidecar"),
    };
    if !sidecar_bin.is_file() {
        return Err(BenchError::Setup(format!(
            "no civic-sidecar at {} (cargo build --release -p civic-sidecar)",
            sidecar_bin.display()
        )));
    }
    let nginx_bin = tool(&cli.nginx, "nginx")?;
    let wrk_bin = tool(&cli.wrk, "wrk")?;
    let pin = match &cli.pin_cpu {
        Some(cpus) => Some((tool(Path::new("taskset"), "taskset")?, cpus.clone())),
        None => None,
    };

    let dir = TempDir::new("bench");
    let ca = TestCa::new().map_err(|e| BenchError::setup("test CA", e))?;
    let plain = Upstream::start(None, UPSTREAM_THREADS)?;
    let tls = Upstream::start(Some(ca.server_config()), UPSTREAM_THREADS)?;
    let wrk = Wrk::new(&wrk_bin, dir.path())?;
    let env = Env {
        plan: plan.clone(),
        dir,
        ca,
        plain,
        tls,
        wrk,
        nginx_bin: nginx_bin.clone(),
        nginx_pin: pin.clone(),
        launch: Launch {
            bin: sidecar_bin,
            pin: pin.clone(),
        },
    };
    // Proxy and memory sidecars share one Civic Auth: it counts their warm-cache exchanges.
    let auth = FakeCivicAuth::start()
        .await
        .map_err(|e| BenchError::setup("start FakeCivicAuth", e))?;

    let proxy = if cli.wants("proxy") {
        eprintln!("== throughput, CPU and latency: direct / nginx / sidecar");
        Some(proxy::run(&env, &auth).await?)
    } else {
        None
    };
    let memory = if cli.wants("memory") {
        eprintln!("== memory: idle, load, 1 MiB responses, SSE streams, creep");
        Some(memory::run(&env, &auth).await?)
    } else {
        None
    };
    let memory_h2 = if cli.wants("memory") || cli.wants("memory-h2") {
        eprintln!("== memory: SSE streams through the sidecar to an HTTP/2 hub over TLS");
        Some(memory::run_h2(&env, &auth).await?)
    } else {
        None
    };
    let wan = if cli.wants("wan") {
        eprintln!("== WAN: per-tool-call latency, hub 40 ms away, direct / sidecar");
        Some(wan::run(&env, &auth).await?)
    } else {
        None
    };
    let tokens = if cli.wants("tokens") {
        eprintln!("== token cache: cold callers, refresh under load, outage");
        Some(tokens::run(&env).await?)
    } else {
        None
    };
    let webhook = if cli.wants("webhook") {
        eprintln!("== webhook handler");
        let n = plan.webhook_iterations;
        Some(
            tokio::task::spawn_blocking(move || webhook::run(n))
                .await
                .map_err(|e| BenchError::Check(format!("webhook task: {e}")))??,
        )
    } else {
        None
    };

    let mut report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(started.elapsed().as_secs()),
        elapsed_s: started.elapsed().as_secs_f64(),
        machine: Machine {
            nproc: machine::nproc(),
            cpu_model: machine::cpu_model(),
            kernel: machine::kernel(),
            load_before,
            load_after: machine::load_average(),
            nginx_version: machine::tool_version(&nginx_bin, "-v"),
            wrk_version: machine::tool_version(&wrk_bin, "-v"),
            pinned_cpus: pin.map(|(_, c)| c),
        },
        plan,
        proxy,
        memory,
        memory_h2,
        tokens,
        webhook,
        wan,
        noop_reconcile: Reconcile {
            api_writes: None,
            source: RECONCILE_SOURCE,
        },
        goals: Vec::new(),
    };
    report.evaluate();
    Ok(report)
}

/// Writes the JSON to `path` and the Markdown beside it (`.md`).
pub fn write(report: &Report, path: &Path) -> Result<PathBuf> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::io("create the output dir", e))?;
    }
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| BenchError::Check(format!("serialize the report: {e}")))?;
    std::fs::write(path, json + "\n").map_err(|e| BenchError::io("write the JSON", e))?;
    let md = path.with_extension("md");
    std::fs::write(&md, report.markdown()).map_err(|e| BenchError::io("write the Markdown", e))?;
    Ok(md)
}
