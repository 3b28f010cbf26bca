//! The measurements, each over the shared [`Env`]: upstreams, CA, tools, and how to start the
//! two proxies.
//!
//! - [`proxy`]: throughput, CPU per request and added latency, direct / nginx / sidecar;
//! - [`memory`]: RSS idle, under load, with large responses, per SSE stream, creep;
//! - [`tokens`]: exchanges per warm request, cold callers, refresh under load, outage;
//! - [`webhook`]: the admission handler's latency for a typical pod;
//! - [`wan`]: per-tool-call latency with the hub 40 ms away, direct / sidecar, h2 / HTTP/1.1.

pub mod memory;
pub mod proxy;
pub mod tokens;
pub mod wan;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use civic_testkit::fs::TempDir;
use civic_testkit::{FakeCivicAuth, SidecarProcess, TestCa};

use crate::cli::Plan;
use crate::client::Target;
use crate::error::{BenchError, Result};
use crate::nginx::{Nginx, NginxUpstream};
use crate::procfs;
use crate::sidecar::{Launch, Subject};
use crate::upstream::Upstream;
use crate::wrk::Wrk;

/// Plain or TLS upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Https,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Http, Kind::Https];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Https => "https",
        }
    }
}

/// What every scenario shares.
pub struct Env {
    pub plan: Plan,
    pub dir: TempDir,
    pub ca: TestCa,
    pub plain: Upstream,
    pub tls: Upstream,
    pub wrk: Wrk,
    pub nginx_bin: PathBuf,
    pub nginx_pin: Option<(PathBuf, String)>,
    pub launch: Launch,
}

impl Env {
    pub fn upstream(&self, kind: Kind) -> &Upstream {
        match kind {
            Kind::Http => &self.plain,
            Kind::Https => &self.tls,
        }
    }

    /// The upstream reached directly (TLS for the HTTPS upstream).
    pub fn direct(&self, kind: Kind) -> Result<Target> {
        let tls = match kind {
            Kind::Http => None,
            Kind::Https => Some(
                self.ca
                    .client_config()
                    .map_err(|e| BenchError::setup("TLS client config", e))?,
            ),
        };
        Ok(Target::direct(self.upstream(kind).addr(), tls))
    }

    pub fn start_nginx(&self, kind: Kind, label: &str) -> Result<Nginx> {
        let up = NginxUpstream {
            addr: self.upstream(kind).addr(),
            ca_file: (kind == Kind::Https).then(|| self.ca.ca_file().to_path_buf()),
        };
        let dir = self.dir.path().join(format!("nginx-{label}"));
        match &self.nginx_pin {
            None => Nginx::start(&self.nginx_bin, &[], &dir, &up),
            Some((taskset, cpus)) => {
                let args = [
                    "-c".to_string(),
                    cpus.clone(),
                    self.nginx_bin.display().to_string(),
                ];
                Nginx::start(taskset, &args, &dir, &up)
            }
        }
    }

    pub async fn start_sidecar(
        &self,
        kind: Kind,
        label: &str,
        auth: &FakeCivicAuth,
        subject: Subject,
    ) -> Result<SidecarProcess> {
        let ca = (kind == Kind::Https).then(|| self.ca.ca_file());
        self.launch
            .spawn(
                &format!("bench-{label}"),
                &self.upstream(kind).mcp_url(),
                ca,
                auth,
                subject,
                &self.dir,
                &[],
            )
            .await
    }

    /// A sidecar in front of a TLS fake hub at `hub_url` (trusting this run's CA), on the
    /// protocol the hub's ALPN offers (`CIVIC_HUB_PROTOCOL=auto`).
    pub async fn start_sidecar_for_hub(
        &self,
        label: &str,
        hub_url: &str,
        auth: &FakeCivicAuth,
    ) -> Result<SidecarProcess> {
        self.launch
            .spawn(
                &format!("bench-{label}"),
                hub_url,
                Some(self.ca.ca_file()),
                auth,
                Subject::File,
                &self.dir,
                &[("CIVIC_HUB_PROTOCOL", "auto")],
            )
            .await
    }
}

/// A proxy under test.
pub enum Proxy {
    Nginx(Nginx),
    Sidecar(SidecarProcess),
}

impl Proxy {
    pub fn name(&self) -> &'static str {
        match self {
            Proxy::Nginx(_) => "nginx",
            Proxy::Sidecar(_) => "sidecar",
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Proxy::Nginx(n) => n.addr(),
            Proxy::Sidecar(s) => s.proxy_addr(),
        }
    }

    pub fn target(&self) -> Target {
        Target::proxy(self.name(), self.addr())
    }

    /// Every process whose CPU counts.
    pub fn cpu_pids(&self) -> Vec<u32> {
        match self {
            Proxy::Nginx(n) => n.pids(),
            Proxy::Sidecar(s) => vec![s.pid()],
        }
    }

    /// The processes whose memory grows with traffic (nginx: the worker).
    pub fn rss_pids(&self) -> Vec<u32> {
        match self {
            Proxy::Nginx(n) => n.workers(),
            Proxy::Sidecar(s) => vec![s.pid()],
        }
    }

    pub fn rss_kib(&self) -> Result<u64> {
        self.rss_pids().iter().map(|p| procfs::rss_kib(*p)).sum()
    }
}

/// Runs `work` while sampling `pids`' summed RSS every 20 ms; returns its output and the peak.
pub async fn with_peak_rss<F: Future>(pids: &[u32], work: F) -> (F::Output, u64) {
    let sample = || -> u64 { pids.iter().filter_map(|p| procfs::rss_kib(*p).ok()).sum() };
    let mut peak = sample();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return (out, peak.max(sample())),
            _ = ticker.tick() => peak = peak.max(sample()),
        }
    }
}

/// CPU seconds used by `pids` while `work` ran, and its output.
pub async fn with_cpu<F: Future>(pids: &[u32], work: F) -> Result<(F::Output, Duration)> {
    let before = procfs::cpu_time_all(pids)?;
    let out = work.await;
    let after = procfs::cpu_time_all(pids)?;
    Ok((out, after.saturating_sub(before)))
}
