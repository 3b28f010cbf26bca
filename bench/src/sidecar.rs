//! Starting the real `civic-sidecar` binary for a measurement (through the testkit's
//! `SidecarBuilder`, which also scans its output for leaked secrets), and reading its metrics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use civic_testkit::fs::TempDir;
use civic_testkit::secrets::{CLIENT_ID, CLIENT_SECRET, PROFILE_ID};
use civic_testkit::{FakeCivicAuth, SidecarBuilder, SidecarProcess, jwt};

use crate::error::{BenchError, Result};

/// Subject of the benchmark workload's service-account token.
pub const SUBJECT: &str = "system:serviceaccount:bench:agent";
/// Log filter: warnings, plus the two "listening" lines the builder needs to find the ports.
/// (nginx runs with `access_log off`: neither side logs per request.)
pub const LOG_FILTER: &str = "warn,civic_sidecar::server=info";

/// Where the subject token comes from.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A projected service-account token in a file (the common case; the token is minted at
    /// start and kept warm).
    File,
    /// Per-user: the workload sends it in this header.
    Header(&'static str),
}

/// Everything a sidecar run needs besides the fakes.
#[derive(Debug, Clone)]
pub struct Launch {
    pub bin: PathBuf,
    /// `taskset` and the CPU list, when both proxies are pinned.
    pub pin: Option<(PathBuf, String)>,
}

impl Launch {
    /// Starts a sidecar forwarding to `hub_url` with tokens from `auth` and `extra_env` set;
    /// files go in `dir`.
    #[allow(clippy::too_many_arguments)]
    pub async fn spawn(
        &self,
        name: &str,
        hub_url: &str,
        ca_file: Option<&Path>,
        auth: &FakeCivicAuth,
        subject: Subject,
        dir: &TempDir,
        extra_env: &[(&str, &str)],
    ) -> Result<SidecarProcess> {
        let mut b = match &self.pin {
            Some((taskset, cpus)) => SidecarBuilder::new(taskset, name)
                .arg("-c")
                .arg(cpus)
                .arg(&self.bin.to_string_lossy()),
            None => SidecarBuilder::new(&self.bin, name),
        };
        let secret = dir.write(&format!("{name}-client-secret"), CLIENT_SECRET);
        b = b
            .env("CIVIC_LOG", LOG_FILTER)
            .env("CIVIC_WORKER_THREADS", "1")
            .env("CIVIC_HUB_URL", hub_url)
            .env("CIVIC_TOKEN_URL", auth.token_url())
            .env("CIVIC_CLIENT_ID", CLIENT_ID)
            .env_path("CIVIC_CLIENT_SECRET_FILE", &secret)
            .env("CIVIC_PROFILE_ID", PROFILE_ID);
        if let Some(ca) = ca_file {
            b = b.env_path("CIVIC_CA_FILE", ca);
        }
        b = match subject {
            Subject::File => {
                let token = jwt::mint_subject(SUBJECT, Duration::from_secs(6 * 3600));
                let path = dir.write(&format!("{name}-subject-token"), &token);
                b.env_path("CIVIC_SUBJECT_TOKEN_FILE", &path)
            }
            Subject::Header(h) => b.env("CIVIC_SUBJECT_HEADER", h),
        };
        for (k, v) in extra_env {
            b = b.env(k, v);
        }
        b.spawn()
            .await
            .map_err(|e| BenchError::setup("start civic-sidecar", e))
    }
}

/// The sum of a metric over its label sets (0 when absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// The value of a metric with exactly this label (e.g. `result="ok"`).
pub fn metric_with_label(text: &str, name: &str, label: &str) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sidecar's counters that the token scenarios read.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TokenCounters {
    pub cache_hits: f64,
    pub cache_misses: f64,
    pub refreshes: f64,
    pub exchanges: f64,
}

impl TokenCounters {
    pub async fn read(sidecar: &SidecarProcess) -> Result<Self> {
        let text = sidecar
            .metrics()
            .await
            .map_err(|e| BenchError::setup("read the sidecar's /metrics", e))?;
        Ok(Self {
            cache_hits: metric_sum(&text, "civic_sidecar_token_cache_hits_total"),
            cache_misses: metric_sum(&text, "civic_sidecar_token_cache_misses_total"),
            refreshes: metric_sum(&text, "civic_sidecar_token_refreshes_total"),
            exchanges: metric_sum(&text, "civic_sidecar_exchanges_total"),
        })
    }

    /// `self − earlier`, counter by counter.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            cache_hits: self.cache_hits - earlier.cache_hits,
            cache_misses: self.cache_misses - earlier.cache_misses,
            refreshes: self.refreshes - earlier.refreshes,
            exchanges: self.exchanges - earlier.exchanges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_text() {
        let text = "# HELP civic_sidecar_exchanges_total x\n# TYPE civic_sidecar_exchanges_total counter\n\
                    civic_sidecar_exchanges_total{result=\"ok\"} 3\n\
                    civic_sidecar_exchanges_total{result=\"unavailable\"} 2\n\
                    civic_sidecar_exchanges_total_other 9\n\
                    civic_sidecar_token_cache_misses_total 7\n";
        assert_eq!(metric_sum(text, "civic_sidecar_exchanges_total"), 5.0);
        assert_eq!(
            metric_with_label(text, "civic_sidecar_exchanges_total", "result=\"ok\""),
            3.0
        );
        assert_eq!(
            metric_sum(text, "civic_sidecar_token_cache_misses_total"),
            7.0
        );
        assert_eq!(metric_sum(text, "absent_total"), 0.0);
    }
}
