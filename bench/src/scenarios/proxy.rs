//! Throughput (wrk), CPU per request (/proc) and added latency at a fixed rate (open loop) of
//! the upstream reached directly, through nginx and through the sidecar, for the plain and the
//! TLS upstream. Repetitions are interleaved (every rep measures all three, in a rotated order),
//! so machine noise lands on all of them alike; ratios are taken within a rep.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use civic_testkit::FakeCivicAuth;
use serde::Serialize;

use super::{Env, Kind, Proxy, with_cpu};
use crate::client::Target;
use crate::error::{BenchError, Result};
use crate::openloop::{self, Spec};
use crate::sidecar::{Subject, metric_sum};
use crate::stats::{Spread, pairwise};

pub const TARGETS: [&str; 3] = ["direct", "nginx", "sidecar"];

/// Figures for one upstream kind.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyFigures {
    pub upstream: &'static str,
    pub throughput_rps: BTreeMap<&'static str, Spread>,
    pub throughput_sidecar_over_nginx: Spread,
    pub throughput_sidecar_over_direct: Spread,
    pub throughput_nginx_over_direct: Spread,
    /// CPU time of the proxy's processes during the wrk run ÷ requests, microseconds.
    pub cpu_us_per_request: BTreeMap<&'static str, Spread>,
    pub cpu_per_request_sidecar_over_nginx: Spread,
    /// CPU seconds per wall second during the wrk run: ≈1 means the proxy, not the load
    /// generator, was the bottleneck (so the throughput ratio measures the proxy).
    pub proxy_cpu_busy: BTreeMap<&'static str, Spread>,
    /// Open-loop latency at the fixed rate, microseconds: target → percentile.
    pub latency_us: BTreeMap<&'static str, BTreeMap<&'static str, Spread>>,
    /// Proxy latency minus direct latency (same rep), microseconds: proxy → percentile.
    pub added_latency_us: BTreeMap<&'static str, BTreeMap<&'static str, Spread>>,
    /// Sidecar's added latency minus nginx's (same rep), microseconds: percentile → spread.
    pub sidecar_added_minus_nginx_added_us: BTreeMap<&'static str, Spread>,
    /// Failed requests (wrk socket errors and non-2xx, open-loop non-200 and transport errors).
    pub errors: BTreeMap<&'static str, u64>,
    /// Requests the upstream refused for lack of a bearer token.
    pub upstream_unauthenticated: u64,
}

/// Token exchanges per request on a warm cache, over every sidecar request of this scenario.
#[derive(Debug, Clone, Serialize)]
pub struct WarmCache {
    pub requests: f64,
    pub exchanges: usize,
    pub exchanges_per_request: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyOutcome {
    pub figures: Vec<ProxyFigures>,
    pub warm_cache: WarmCache,
}

#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    busy: Vec<f64>,
    pct: BTreeMap<&'static str, Vec<f64>>,
    errors: u64,
}

struct Set {
    kind: Kind,
    direct: Target,
    nginx: Proxy,
    sidecar: Proxy,
    samples: BTreeMap<&'static str, Samples>,
}

impl Set {
    fn pick(&self, which: &str) -> (Target, Vec<u32>) {
        match which {
            "nginx" => (self.nginx.target(), self.nginx.cpu_pids()),
            "sidecar" => (self.sidecar.target(), self.sidecar.cpu_pids()),
            _ => (self.direct.clone(), Vec::new()),
        }
    }
}

const PERCENTILES: [(&str, f64); 3] = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)];

/// Rep `rep` measures the three targets in this order (each goes first once in three reps).
fn order(rep: usize) -> [&'static str; 3] {
    let mut o = TARGETS;
    o.rotate_left(rep % 3);
    o
}

pub async fn run(env: &Env, auth: &FakeCivicAuth) -> Result<ProxyOutcome> {
    let mut sets = Vec::new();
    for kind in Kind::ALL {
        let nginx = Proxy::Nginx(env.start_nginx(kind, kind.name())?);
        let sidecar = Proxy::Sidecar(
            env.start_sidecar(kind, &format!("proxy-{}", kind.name()), auth, Subject::File)
                .await?,
        );
        sets.push(Set {
            kind,
            direct: env.direct(kind)?,
            nginx,
            sidecar,
            samples: BTreeMap::new(),
        });
    }
    let exchanges_before = auth.calls();
    let requests_before = sidecar_requests(&sets).await?;
    let unauth_before: Vec<u64> = Kind::ALL
        .iter()
        .map(|k| {
            env.upstream(*k)
                .stats()
                .unauthenticated
                .load(Ordering::Relaxed)
        })
        .collect();

    let plan = &env.plan;
    for rep in 0..plan.reps {
        for set in &mut sets {
            for which in order(rep) {
                throughput(env, set, which).await?;
                eprintln!(
                    "  rep {} {:5} {:7} {:>9.0} req/s",
                    rep + 1,
                    set.kind.name(),
                    which,
                    set.samples[which].rps.last().copied().unwrap_or(f64::NAN)
                );
            }
        }
        for set in &mut sets {
            for which in order(rep) {
                latency(env, set, which).await?;
                let s = &set.samples[which];
                eprintln!(
                    "  rep {} {:5} {:7} p50 {:>7.1} µs  p90 {:>7.1} µs at {} req/s",
                    rep + 1,
                    set.kind.name(),
                    which,
                    s.pct["p50"].last().copied().unwrap_or(f64::NAN),
                    s.pct["p90"].last().copied().unwrap_or(f64::NAN),
                    plan.latency_rate
                );
            }
        }
    }

    let exchanges = auth.calls() - exchanges_before;
    let requests = sidecar_requests(&sets).await? - requests_before;
    let figures = sets
        .iter()
        .zip(unauth_before)
        .map(|(set, before)| {
            let unauth = env
                .upstream(set.kind)
                .stats()
                .unauthenticated
                .load(Ordering::Relaxed);
            figures(set, unauth - before)
        })
        .collect();
    Ok(ProxyOutcome {
        figures,
        warm_cache: WarmCache {
            requests,
            exchanges,
            exchanges_per_request: exchanges as f64 / requests.max(1.0),
        },
    })
}

async fn sidecar_requests(sets: &[Set]) -> Result<f64> {
    let mut total = 0.0;
    for set in sets {
        if let Proxy::Sidecar(s) = &set.sidecar {
            let text = s
                .metrics()
                .await
                .map_err(|e| BenchError::setup("sidecar /metrics", e))?;
            total += metric_sum(&text, "civic_sidecar_requests_total");
        }
    }
    Ok(total)
}

async fn throughput(env: &Env, set: &mut Set, which: &'static str) -> Result<()> {
    let plan = &env.plan;
    let (target, pids) = set.pick(which);
    let warm = env
        .wrk
        .run(&target, plan.wrk_connections, plan.wrk_warmup)
        .await?;
    let (run, cpu) = with_cpu(
        &pids,
        env.wrk
            .run(&target, plan.wrk_connections, plan.wrk_duration),
    )
    .await?;
    let run = run?;
    let s = set.samples.entry(which).or_default();
    s.rps.push(run.rps);
    s.errors += run.errors + warm.errors;
    if !pids.is_empty() && run.requests > 0 {
        s.cpu_us.push(cpu.as_secs_f64() * 1e6 / run.requests as f64);
        s.busy.push(cpu.as_secs_f64() / run.seconds.max(1e-9));
    }
    Ok(())
}

async fn latency(env: &Env, set: &mut Set, which: &'static str) -> Result<()> {
    let plan = &env.plan;
    let (target, _) = set.pick(which);
    let spec = Spec {
        target,
        rate: plan.latency_rate,
        warmup: plan.latency_warmup,
        duration: plan.latency_duration,
        connections: plan.latency_connections,
        make: Arc::new(|t: &Target| t.small_post()),
        timeline: false,
    };
    let out = tokio::task::spawn_blocking(move || openloop::run(&spec))
        .await
        .map_err(|e| BenchError::Check(format!("open-loop task: {e}")))??;
    let s = set.samples.entry(which).or_default();
    for (name, q) in PERCENTILES {
        s.pct.entry(name).or_default().push(out.micros(q));
    }
    s.errors += out.total() - out.ok();
    Ok(())
}

fn figures(set: &Set, unauthenticated: u64) -> ProxyFigures {
    let get = |w: &str| set.samples.get(w);
    let rps = |w: &str| get(w).map(|s| s.rps.clone()).unwrap_or_default();
    let cpu = |w: &str| get(w).map(|s| s.cpu_us.clone()).unwrap_or_default();
    let pct = |w: &str, p: &str| {
        get(w)
            .and_then(|s| s.pct.get(p).cloned())
            .unwrap_or_default()
    };
    let mut throughput_rps = BTreeMap::new();
    let mut cpu_us_per_request = BTreeMap::new();
    let mut proxy_cpu_busy = BTreeMap::new();
    let mut latency_us = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for w in TARGETS {
        throughput_rps.insert(w, Spread::of(rps(w)));
        let mut per = BTreeMap::new();
        for (p, _) in PERCENTILES {
            per.insert(p, Spread::of(pct(w, p)));
        }
        latency_us.insert(w, per);
        errors.insert(w, get(w).map_or(0, |s| s.errors));
        if w != "direct" {
            cpu_us_per_request.insert(w, Spread::of(cpu(w)));
            proxy_cpu_busy.insert(
                w,
                Spread::of(get(w).map(|s| s.busy.clone()).unwrap_or_default()),
            );
        }
    }
    let mut added_latency_us = BTreeMap::new();
    for w in ["nginx", "sidecar"] {
        let mut per = BTreeMap::new();
        for (p, _) in PERCENTILES {
            per.insert(p, pairwise(&pct(w, p), &pct("direct", p), |a, b| a - b));
        }
        added_latency_us.insert(w, per);
    }
    let mut excess = BTreeMap::new();
    for (p, _) in PERCENTILES {
        let side: Vec<f64> = pct("sidecar", p)
            .iter()
            .zip(pct("direct", p))
            .map(|(a, b)| a - b)
            .collect();
        let ngx: Vec<f64> = pct("nginx", p)
            .iter()
            .zip(pct("direct", p))
            .map(|(a, b)| a - b)
            .collect();
        excess.insert(p, pairwise(&side, &ngx, |a, b| a - b));
    }
    ProxyFigures {
        upstream: set.kind.name(),
        throughput_sidecar_over_nginx: pairwise(&rps("sidecar"), &rps("nginx"), |a, b| a / b),
        throughput_sidecar_over_direct: pairwise(&rps("sidecar"), &rps("direct"), |a, b| a / b),
        throughput_nginx_over_direct: pairwise(&rps("nginx"), &rps("direct"), |a, b| a / b),
        cpu_per_request_sidecar_over_nginx: pairwise(&cpu("sidecar"), &cpu("nginx"), |a, b| a / b),
        throughput_rps,
        cpu_us_per_request,
        proxy_cpu_busy,
        latency_us,
        added_latency_us,
        sidecar_added_minus_nginx_added_us: excess,
        errors,
        upstream_unauthenticated: unauthenticated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_leads_once_in_three_reps() {
        let firsts: Vec<&str> = (0..3).map(|r| order(r)[0]).collect();
        for t in TARGETS {
            assert!(firsts.contains(&t), "{firsts:?}");
        }
    }
}
