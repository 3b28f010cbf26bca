//! The run's report: every figure (JSON), each goal of docs/architecture.md §7 met or gap, and a
//! Markdown rendering (printed, and written beside the JSON for docs/performance.md).

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::Plan;
use crate::scenarios::memory::{MemoryFigures, SseH2Figures};
use crate::scenarios::proxy::{ProxyFigures, ProxyOutcome};
use crate::scenarios::tokens::TokenFigures;
use crate::scenarios::wan::{self, Mode, WanFigures};
use crate::scenarios::webhook::WebhookFigures;
use crate::stats::Spread;

/// Where the figures came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub load_before: String,
    pub load_after: String,
    pub nginx_version: String,
    pub wrk_version: String,
    /// `taskset` CPU list both proxies ran on, if pinned.
    pub pinned_cpus: Option<String>,
}

/// The no-op reconcile is measured by the operator's own real-apiserver test, not here.
#[derive(Debug, Clone, Serialize)]
pub struct Reconcile {
    pub api_writes: Option<u64>,
    pub source: &'static str,
}

pub const RECONCILE_SOURCE: &str = "operator/tests/apiserver.rs (real kube-apiserver): over 4 resync periods the \
     CivicIntegration's resourceVersion and civic_operator_status_writes_total stay unchanged; \
     run with `cargo nextest run -p civic-operator --test apiserver`";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Met,
    Gap,
    NotMeasured,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Gap => "**gap**",
            Status::NotMeasured => "not measured here",
        }
    }

    fn from(ok: bool) -> Self {
        if ok { Status::Met } else { Status::Gap }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: &'static str,
    pub target: &'static str,
    pub measured: String,
    pub status: Status,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub started_unix: u64,
    pub elapsed_s: f64,
    pub machine: Machine,
    pub plan: Plan,
    pub proxy: Option<ProxyOutcome>,
    pub memory: Option<Vec<MemoryFigures>>,
    pub memory_h2: Option<SseH2Figures>,
    pub tokens: Option<TokenFigures>,
    pub webhook: Option<WebhookFigures>,
    pub wan: Option<WanFigures>,
    pub noop_reconcile: Reconcile,
    pub goals: Vec<Goal>,
}

fn each_kind(
    proxy: &ProxyOutcome,
    f: impl Fn(&ProxyFigures) -> (String, bool),
) -> (String, Status) {
    let parts: Vec<(String, bool)> = proxy.figures.iter().map(&f).collect();
    let text = proxy
        .figures
        .iter()
        .zip(&parts)
        .map(|(fig, (t, _))| format!("{}: {t}", fig.upstream))
        .collect::<Vec<_>>()
        .join("; ");
    (text, Status::from(parts.iter().all(|(_, ok)| *ok)))
}

fn le(s: &Spread, limit: f64) -> bool {
    s.median.is_finite() && s.median <= limit
}

fn ge(s: &Spread, limit: f64) -> bool {
    s.median.is_finite() && s.median >= limit
}

impl Report {
    /// Evaluates every goal of docs/architecture.md §7 from the figures present.
    pub fn evaluate(&mut self) {
        let mut goals = Vec::new();
        let missing = |goal, target| Goal {
            goal,
            target,
            measured: "scenario not run".into(),
            status: Status::NotMeasured,
        };
        match &self.proxy {
            Some(p) => {
                let (m, s) = each_kind(p, |f| {
                    let r = &f.throughput_sidecar_over_nginx;
                    (format!("{}×", r.show(2)), ge(r, 0.95))
                });
                goals.push(Goal {
                    goal: "throughput sidecar ÷ nginx",
                    target: "≥ 0.95",
                    measured: m,
                    status: s,
                });
                let (m, s) = each_kind(p, |f| {
                    let r = &f.cpu_per_request_sidecar_over_nginx;
                    (format!("{}×", r.show(2)), le(r, 1.15))
                });
                goals.push(Goal {
                    goal: "CPU per request sidecar ÷ nginx",
                    target: "≤ 1.15",
                    measured: m,
                    status: s,
                });
                let (m, s) = each_kind(p, |f| {
                    let p50 = &f.sidecar_added_minus_nginx_added_us["p50"];
                    let p90 = &f.sidecar_added_minus_nginx_added_us["p90"];
                    (
                        format!("p50 {} µs, p90 {} µs", p50.show(1), p90.show(1)),
                        le(p50, 25.0) && le(p90, 25.0),
                    )
                });
                goals.push(Goal {
                    goal: "added latency at 1,000 rps: sidecar's − nginx's",
                    target: "≤ 25 µs (p50, p90)",
                    measured: m,
                    status: s,
                });
                let w = &p.warm_cache;
                goals.push(Goal {
                    goal: "token exchanges per request, warm cache",
                    target: "0",
                    measured: format!("{} in {:.0} requests", w.exchanges, w.requests),
                    status: Status::from(w.exchanges == 0 && w.requests > 0.0),
                });
            }
            None => {
                goals.push(missing("throughput sidecar ÷ nginx", "≥ 0.95"));
                goals.push(missing("CPU per request sidecar ÷ nginx", "≤ 1.15"));
                goals.push(missing(
                    "added latency at 1,000 rps: sidecar's − nginx's",
                    "≤ 25 µs (p50, p90)",
                ));
                goals.push(missing("token exchanges per request, warm cache", "0"));
            }
        }
        match self
            .memory
            .as_ref()
            .and_then(|m| m.iter().find(|f| f.proxy == "sidecar"))
        {
            Some(m) => {
                goals.push(Goal {
                    goal: "sidecar RSS idle",
                    target: "≤ 8 MiB",
                    measured: format!("{:.2} MiB", m.idle_kib as f64 / 1024.0),
                    status: Status::from(m.idle_kib <= 8 * 1024),
                });
                let per = Spread::of(m.sse.per_stream_kib.clone());
                goals.push(Goal {
                    goal: "sidecar RSS per open SSE stream, events lost",
                    target: "≤ 24 KiB, 0 lost",
                    measured: format!(
                        "{} KiB per stream ({} streams); {} of {} events lost",
                        per.show(1),
                        self.plan.sse_streams,
                        m.sse.events_lost,
                        m.sse.events_expected.iter().sum::<u64>()
                    ),
                    status: Status::from(m.sse.meets(self.plan.sse_streams, 24.0)),
                });
                goals.push(Goal {
                    goal: "sidecar RSS creep over 3 load cycles",
                    target: "≤ 0.5 MiB",
                    measured: format!(
                        "{:+} KiB (after cycles: {:?} KiB)",
                        m.creep_kib, m.after_cycle_kib
                    ),
                    status: Status::from(m.creep_kib <= 512),
                });
            }
            None => {
                goals.push(missing("sidecar RSS idle", "≤ 8 MiB"));
                goals.push(missing(
                    "sidecar RSS per open SSE stream, events lost",
                    "≤ 24 KiB, 0 lost",
                ));
                goals.push(missing("sidecar RSS creep over 3 load cycles", "≤ 0.5 MiB"));
            }
        }
        match &self.memory_h2 {
            Some(m) => {
                let per = Spread::of(m.sse.per_stream_kib.clone());
                goals.push(Goal {
                    goal: "sidecar RSS per open SSE stream, hub on HTTP/2 over TLS, events lost",
                    target: "≤ 24 KiB, 0 lost",
                    measured: format!(
                        "{} KiB per stream ({} streams on {} hub connection(s), all h2: {}); {} of {} events lost",
                        per.show(1),
                        self.plan.sse_streams,
                        m.hub_connections,
                        m.all_h2,
                        m.sse.events_lost,
                        m.sse.events_expected.iter().sum::<u64>()
                    ),
                    status: Status::from(m.sse.meets(self.plan.sse_streams, 24.0) && m.all_h2),
                });
            }
            None => goals.push(missing(
                "sidecar RSS per open SSE stream, hub on HTTP/2 over TLS, events lost",
                "≤ 24 KiB, 0 lost",
            )),
        }
        let wan_goals = [
            (
                Mode::SessionPerCall,
                "WAN (40 ms RTT), new MCP session per tool call: sidecar p50",
                "≤ direct p50 − 40 ms",
            ),
            (
                Mode::LongLived,
                "WAN (40 ms RTT), one long-lived session: sidecar p50",
                "≤ direct p50 + 1 ms",
            ),
        ];
        for (mode, goal, target) in wan_goals {
            goals.push(match &self.wan {
                Some(w) => {
                    let checks = wan::goal_checks(w, mode);
                    Goal {
                        goal,
                        target,
                        measured: checks
                            .iter()
                            .map(|(client, hub, p50, limit, met)| {
                                format!(
                                    "{client}, {hub} hub: {p50:.1} ms vs ≤ {limit:.1} ms{}",
                                    if *met { "" } else { " (gap)" }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                        status: if checks.is_empty() {
                            Status::NotMeasured
                        } else {
                            Status::from(checks.iter().all(|c| c.4))
                        },
                    }
                }
                None => missing(goal, target),
            });
        }
        match &self.tokens {
            Some(t) => {
                let c = &t.cold_callers;
                let ok = c.statuses.get(&200).copied().unwrap_or(0);
                goals.push(Goal {
                    goal: "exchanges for 1,000 concurrent first callers",
                    target: "exactly 1",
                    measured: format!(
                        "{} exchange(s); {} of {} answered 200",
                        c.exchanges, ok, c.callers
                    ),
                    status: Status::from(c.exchanges == 1 && ok as usize == c.callers),
                });
                let r = &t.refresh;
                goals.push(Goal {
                    goal: "requests waiting on a background refresh (across expiries, under load)",
                    target: "0",
                    measured: format!(
                        "{} waited (> {} ms during an exchange), {} cache misses, over {} refreshes and {} requests",
                        r.waited_on_refresh, r.threshold_ms, r.cache_misses, r.exchanges, r.requests
                    ),
                    status: if r.exchanges < 2 {
                        Status::NotMeasured
                    } else {
                        Status::from(r.waited_on_refresh == 0 && r.cache_misses == 0.0 && r.non_200 == 0)
                    },
                });
                let o = &t.outage;
                goals.push(Goal {
                    goal: "exchange attempts during a Civic Auth outage under load",
                    target: "≤ 1 per backoff step",
                    measured: format!(
                        "{} attempts in {:.0} s, {} sooner than the backoff allows",
                        o.attempts, o.outage_s, o.extra_attempts
                    ),
                    status: if o.attempts < 2 {
                        Status::NotMeasured
                    } else {
                        Status::from(o.extra_attempts == 0)
                    },
                });
            }
            None => {
                goals.push(missing(
                    "exchanges for 1,000 concurrent first callers",
                    "exactly 1",
                ));
                goals.push(missing(
                    "requests waiting on a background refresh (across expiries, under load)",
                    "0",
                ));
                goals.push(missing(
                    "exchange attempts during a Civic Auth outage under load",
                    "≤ 1 per backoff step",
                ));
            }
        }
        goals.push(match &self.webhook {
            Some(w) => Goal {
                goal: "webhook handler p99, typical pod",
                target: "≤ 1 ms",
                measured: format!(
                    "p50 {:.0} µs, p99 {:.0} µs wall clock (CPU time p99 {:.0} µs)",
                    w.p50_us, w.p99_us, w.cpu_p99_us
                ),
                status: Status::from(w.p99_us <= 1000.0),
            },
            None => missing("webhook handler p99, typical pod", "≤ 1 ms"),
        });
        goals.push(Goal {
            goal: "API writes of a no-op reconcile",
            target: "0",
            measured: "asserted by the operator's real-apiserver test (see noop_reconcile.source)"
                .into(),
            status: Status::NotMeasured,
        });
        self.goals = goals;
    }

    /// The report as Markdown: machine, figures, goals.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Machine: {} × {}, Linux {}; load average before {} / after {}; nginx {}, wrk {}; {}.\n",
            m.nproc,
            m.cpu_model,
            m.kernel,
            m.load_before,
            m.load_after,
            m.nginx_version,
            m.wrk_version,
            match &m.pinned_cpus {
                Some(c) => format!("both proxies pinned to CPU {c}"),
                None =>
                    "same budget by threads: 1 nginx worker vs CIVIC_WORKER_THREADS=1, unpinned"
                        .into(),
            }
        );
        let _ = writeln!(
            out,
            "Command: `{}` ({} rep(s), {:.0} s). Figures are `median (min–max)` over reps; ratios and differences are taken within a rep.\n",
            self.command, self.plan.reps, self.elapsed_s
        );
        let mut rows: Vec<[String; 2]> = Vec::new();
        if let Some(p) = &self.proxy {
            for f in &p.figures {
                let u = f.upstream;
                let t = &f.throughput_rps;
                rows.push([
                    format!("throughput, req/s, {u} upstream: direct / nginx / sidecar"),
                    format!(
                        "{} / {} / {}",
                        t["direct"].show(0),
                        t["nginx"].show(0),
                        t["sidecar"].show(0)
                    ),
                ]);
                rows.push([
                    format!(
                        "throughput ratio, {u}: sidecar ÷ nginx; sidecar ÷ direct (nginx ÷ direct)"
                    ),
                    format!(
                        "{}; {} ({})",
                        f.throughput_sidecar_over_nginx.show(2),
                        f.throughput_sidecar_over_direct.show(2),
                        f.throughput_nginx_over_direct.show(2)
                    ),
                ]);
                rows.push([
                    format!("CPU per request, µs, {u}: nginx / sidecar (ratio)"),
                    format!(
                        "{} / {} ({}×)",
                        f.cpu_us_per_request["nginx"].show(2),
                        f.cpu_us_per_request["sidecar"].show(2),
                        f.cpu_per_request_sidecar_over_nginx.show(2)
                    ),
                ]);
                rows.push([
                    format!("proxy CPU busy during wrk (cores), {u}: nginx / sidecar"),
                    format!(
                        "{} / {}",
                        f.proxy_cpu_busy["nginx"].show(2),
                        f.proxy_cpu_busy["sidecar"].show(2)
                    ),
                ]);
                for p in ["p50", "p90", "p99"] {
                    let l = &f.latency_us;
                    rows.push([
                        format!(
                            "latency {p} at {:.0} rps, µs, {u}: direct / nginx / sidecar",
                            self.plan.latency_rate
                        ),
                        format!(
                            "{} / {} / {}",
                            l["direct"][p].show(1),
                            l["nginx"][p].show(1),
                            l["sidecar"][p].show(1)
                        ),
                    ]);
                }
                for p in ["p50", "p90"] {
                    let a = &f.added_latency_us;
                    rows.push([
                        format!("added latency {p}, µs, {u}: nginx / sidecar (sidecar − nginx)"),
                        format!(
                            "{} / {} ({})",
                            a["nginx"][p].show(1),
                            a["sidecar"][p].show(1),
                            f.sidecar_added_minus_nginx_added_us[p].show(1)
                        ),
                    ]);
                }
                rows.push([
                    format!("failed requests, {u}: direct / nginx / sidecar"),
                    format!(
                        "{} / {} / {}",
                        f.errors["direct"], f.errors["nginx"], f.errors["sidecar"]
                    ),
                ]);
            }
            rows.push([
                "token exchanges per request, warm cache".into(),
                format!(
                    "{:.6} ({} in {:.0} requests)",
                    p.warm_cache.exchanges_per_request,
                    p.warm_cache.exchanges,
                    p.warm_cache.requests
                ),
            ]);
        }
        if let Some(mem) = &self.memory {
            let by = |n: &str| mem.iter().find(|f| f.proxy == n);
            if let (Some(n), Some(s)) = (by("nginx"), by("sidecar")) {
                let mib = |k: u64| format!("{:.2}", k as f64 / 1024.0);
                let peak = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
                rows.push([
                    "RSS idle, MiB: nginx worker / sidecar".into(),
                    format!(
                        "{} / {} (nginx master {})",
                        mib(n.idle_kib),
                        mib(s.idle_kib),
                        n.master_kib.map_or("?".into(), mib)
                    ),
                ]);
                rows.push([
                    "RSS under small-body load (peak), MiB: nginx / sidecar".into(),
                    format!(
                        "{} / {}",
                        mib(peak(&n.load_peak_kib)),
                        mib(peak(&s.load_peak_kib))
                    ),
                ]);
                rows.push([
                    format!(
                        "RSS with {} concurrent 1 MiB responses (peak), MiB: nginx / sidecar",
                        self.plan.large_clients
                    ),
                    format!(
                        "{} / {} ({} / {} responses, {} / {} bad)",
                        mib(peak(&n.large_peak_kib)),
                        mib(peak(&s.large_peak_kib)),
                        n.large_responses,
                        s.large_responses,
                        n.large_bad,
                        s.large_bad
                    ),
                ]);
                rows.push([
                    format!(
                        "RSS per open SSE stream ({} streams), KiB: nginx / sidecar",
                        self.plan.sse_streams
                    ),
                    format!(
                        "{} / {}",
                        Spread::of(n.sse.per_stream_kib.clone()).show(1),
                        Spread::of(s.sse.per_stream_kib.clone()).show(1)
                    ),
                ]);
                rows.push([
                    "SSE events received / expected: nginx; sidecar".into(),
                    format!(
                        "{} / {}; {} / {}",
                        n.sse.events_received.iter().sum::<u64>(),
                        n.sse.events_expected.iter().sum::<u64>(),
                        s.sse.events_received.iter().sum::<u64>(),
                        s.sse.events_expected.iter().sum::<u64>()
                    ),
                ]);
                rows.push([
                    format!(
                        "RSS creep over {} load cycles, KiB: nginx / sidecar",
                        self.plan.memory_cycles
                    ),
                    format!("{:+} / {:+}", n.creep_kib, s.creep_kib),
                ]);
            }
        }
        if let Some(m) = &self.memory_h2 {
            rows.push([
                format!(
                    "sidecar RSS per open SSE stream ({} streams), hub on HTTP/2 over TLS, KiB",
                    self.plan.sse_streams
                ),
                format!(
                    "{} (idle {:.2} MiB; {} hub connection(s); events {} / {})",
                    Spread::of(m.sse.per_stream_kib.clone()).show(1),
                    m.idle_kib as f64 / 1024.0,
                    m.hub_connections,
                    m.sse.events_received.iter().sum::<u64>(),
                    m.sse.events_expected.iter().sum::<u64>()
                ),
            ]);
        }
        if let Some(w) = &self.wan {
            for c in &w.cells {
                rows.push([
                    format!(
                        "WAN {:.0} ms RTT, per tool call p50 / p90, ms: {} client, {}, {} hub, {}",
                        w.rtt_ms,
                        c.client,
                        c.mode.name(),
                        c.hub,
                        c.path
                    ),
                    match &c.error {
                        None => format!(
                            "{:.1} / {:.1} ({} calls; {} hub connection(s))",
                            c.p50_ms, c.p90_ms, c.calls, c.hub_connections
                        ),
                        Some(e) => format!("failed: {e}"),
                    },
                ]);
            }
        }
        if let Some(t) = &self.tokens {
            let c = &t.cold_callers;
            rows.push([
                format!(
                    "exchanges for {} concurrent first callers ({} ms exchange)",
                    c.callers, c.exchange_delay_ms
                ),
                format!(
                    "{} (statuses {:?}, {} transport errors)",
                    c.exchanges, c.statuses, c.transport_errors
                ),
            ]);
            let r = &t.refresh;
            rows.push([
                format!(
                    "refresh under load ({} s tokens, {} ms exchanges, {:.0} rps, {:.0} s): requests that waited on a refresh",
                    r.token_ttl_s, r.exchange_delay_ms, r.rate, r.duration_s
                ),
                format!(
                    "{} ({} slower than {} ms in all; {} cache misses; {} exchanges; p99 {:.0} µs, max {:.0} µs; {} non-200)",
                    r.waited_on_refresh, r.slower_than_threshold, r.threshold_ms, r.cache_misses, r.exchanges, r.p99_us, r.max_us, r.non_200
                ),
            ]);
            let o = &t.outage;
            rows.push([
                format!(
                    "exchange attempts during a {:.0} s Civic Auth outage ({:.0} rps, {} s tokens)",
                    o.outage_s, o.rate, o.token_ttl_s
                ),
                format!(
                    "{} at {:?} s; {} sooner than the backoff allows; workload saw {:?}; recovered {}",
                    o.attempts,
                    o.attempt_offsets_s.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
                    o.extra_attempts,
                    o.statuses_during,
                    o.recovered_after_s
                        .map_or(format!("not within {:.0} s", o.recovery_window_s), |s| format!("{s:.1} s after")),
                ),
            ]);
        }
        if let Some(w) = &self.webhook {
            rows.push([
                "webhook handler, typical pod: p50 / p90 / p99 / max, µs".into(),
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0} ({} reviews)",
                    w.p50_us, w.p90_us, w.p99_us, w.max_us, w.iterations
                ),
            ]);
            rows.push([
                "webhook handler CPU time per call (preemption left out): p50 / p99, µs".into(),
                format!("{:.0} / {:.0}", w.cpu_p50_us, w.cpu_p99_us),
            ]);
        }
        rows.push([
            "API writes of a no-op reconcile".into(),
            "0, asserted by operator/tests/apiserver.rs (not measured by this run)".into(),
        ]);
        let _ = writeln!(out, "| Figure | Value |\n|---|---|");
        for [k, v] in rows {
            let _ = writeln!(out, "| {k} | {v} |");
        }
        let _ = writeln!(
            out,
            "\n| Goal | Target | Measured | Status |\n|---|---|---|---|"
        );
        for g in &self.goals {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                g.goal,
                g.target,
                g.measured,
                g.status.label()
            );
        }
        out
    }
}
