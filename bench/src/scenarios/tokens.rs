//! The token cache under load, each case against its own FakeCivicAuth and a fresh sidecar:
//!
//! - **cold callers**: 1,000 concurrent first requests of one new user (per-user header mode)
//!   while the exchange takes 300 ms: how many exchanges;
//! - **refresh**: short-lived tokens (6 s) and slow exchanges (500 ms) under a fixed-rate load:
//!   requests slower than a threshold while an exchange ran (they waited on the refresh);
//! - **outage**: Civic Auth answers 503 for 30 s under load: the exchange attempts, checked
//!   against the backoff schedule (≤ 1 attempt per step), and what the workload saw.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use civic_testkit::{AuthReply, FakeCivicAuth, jwt};
use http::HeaderValue;
use http::header::AUTHORIZATION;
use serde::Serialize;
use tokio::task::JoinSet;

use super::{Env, Kind};
use crate::client::{Target, with_header};
use crate::error::{BenchError, Result};
use crate::openloop::{self, Outcome, Spec};
use crate::sidecar::{Subject, TokenCounters};

/// Backoff of the sidecar's token cache (`civic_sidecar::cache::EXCHANGE_BACKOFF`): the delay
/// after the n-th consecutive failure is at least half of `min(MAX, BASE · 2^(n−1))`.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Slack for timer and scheduling jitter when checking gaps between attempts.
const GAP_TOLERANCE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Serialize)]
pub struct ColdCallers {
    pub callers: usize,
    pub exchange_delay_ms: u128,
    pub exchanges: usize,
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefreshUnderLoad {
    pub token_ttl_s: u64,
    pub exchange_delay_ms: u128,
    pub rate: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub non_200: u64,
    /// Exchanges (all background refreshes) while the load ran.
    pub exchanges: usize,
    pub threshold_ms: u128,
    /// Requests slower than the threshold, for any reason.
    pub slower_than_threshold: u64,
    /// …of which overlapped an exchange in flight: they waited on the refresh.
    pub waited_on_refresh: u64,
    /// The sidecar's own count of requests that found no usable token (`cache_misses`).
    pub cache_misses: f64,
    pub refreshes_started: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutageUnderLoad {
    pub outage_s: f64,
    pub token_ttl_s: u64,
    pub rate: f64,
    /// Exchange attempts that reached Civic Auth during the outage.
    pub attempts: usize,
    /// Their times, seconds from the outage start.
    pub attempt_offsets_s: Vec<f64>,
    /// Gap before each later attempt, and the least the backoff allows there.
    pub gaps_s: Vec<f64>,
    pub min_gaps_s: Vec<f64>,
    /// Attempts that came sooner than their backoff step allows (more than one per step).
    pub extra_attempts: usize,
    /// What the workload got while Civic Auth was down (status → count; 0: no answer).
    pub statuses_during: BTreeMap<u16, u64>,
    /// From the outage's end to the first 200 after a 503; `None` if none in the window.
    pub recovered_after_s: Option<f64>,
    pub recovery_window_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenFigures {
    pub cold_callers: ColdCallers,
    pub refresh: RefreshUnderLoad,
    pub outage: OutageUnderLoad,
}

pub async fn run(env: &Env) -> Result<TokenFigures> {
    let cold_callers = cold(env).await?;
    eprintln!(
        "  {} cold callers → {} exchange(s)",
        cold_callers.callers, cold_callers.exchanges
    );
    let refresh = refresh(env).await?;
    eprintln!(
        "  refresh under load: {} exchanges, {} requests waited on one",
        refresh.exchanges, refresh.waited_on_refresh
    );
    let outage = outage(env).await?;
    eprintln!(
        "  {:.0} s outage: {} attempts, {} extra",
        outage.outage_s, outage.attempts, outage.extra_attempts
    );
    Ok(TokenFigures {
        cold_callers,
        refresh,
        outage,
    })
}

async fn fake_auth() -> Result<FakeCivicAuth> {
    FakeCivicAuth::start()
        .await
        .map_err(|e| BenchError::setup("start FakeCivicAuth", e))
}

async fn cold(env: &Env) -> Result<ColdCallers> {
    let plan = &env.plan;
    let auth = fake_auth().await?;
    auth.set_default(AuthReply::ok().delay(plan.cold_exchange_delay));
    let sidecar = env
        .start_sidecar(Kind::Http, "cold", &auth, Subject::Header("Authorization"))
        .await?;
    let target = Target::proxy("sidecar", sidecar.proxy_addr());
    let subject = jwt::mint_subject("bench-user-cold", Duration::from_secs(3600));
    let bearer = HeaderValue::from_str(&format!("Bearer {subject}"))
        .map_err(|_| BenchError::Check("subject token is not a header value".into()))?;
    // Every connection first, so the requests then arrive together.
    let mut conns = Vec::with_capacity(plan.cold_callers);
    for i in 0..plan.cold_callers {
        if i > 0 && i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        conns.push(target.connect().await?);
    }
    let before = auth.calls();
    let mut set = JoinSet::new();
    for mut c in conns {
        let req = with_header(target.small_post(), AUTHORIZATION, bearer.clone());
        set.spawn(async move { c.send(req).await });
    }
    let mut statuses = BTreeMap::new();
    let mut transport_errors = 0;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(a)) => *statuses.entry(a.status.as_u16()).or_default() += 1,
            _ => transport_errors += 1,
        }
    }
    let exchanges = auth.calls() - before;
    sidecar.finish();
    Ok(ColdCallers {
        callers: plan.cold_callers,
        exchange_delay_ms: plan.cold_exchange_delay.as_millis(),
        exchanges,
        statuses,
        transport_errors,
    })
}

/// Runs a fixed-rate load against `target` in a blocking thread.
async fn load(target: Target, rate: f64, duration: Duration) -> Result<Outcome> {
    let spec = Spec {
        target,
        rate,
        warmup: Duration::ZERO,
        duration,
        connections: 4,
        make: Arc::new(|t: &Target| t.small_post()),
        timeline: true,
    };
    tokio::task::spawn_blocking(move || openloop::run(&spec))
        .await
        .map_err(|e| BenchError::Check(format!("open-loop task: {e}")))?
}

async fn refresh(env: &Env) -> Result<RefreshUnderLoad> {
    let plan = &env.plan;
    let auth = fake_auth().await?;
    let delay = plan.refresh_exchange_delay;
    auth.set_default(AuthReply::ok_expires_in(plan.refresh_token_ttl).delay(delay));
    let sidecar = env
        .start_sidecar(Kind::Http, "refresh", &auth, Subject::File)
        .await?;
    let before = TokenCounters::read(&sidecar).await?;
    let out = load(
        Target::proxy("sidecar", sidecar.proxy_addr()),
        plan.refresh_rate,
        plan.refresh_duration,
    )
    .await?;
    let counters = TokenCounters::read(&sidecar).await?.since(&before);
    let start = out.recorded_from;
    let end = start + plan.refresh_duration + Duration::from_secs(1);
    // Exchanges in flight during the load: [arrival, arrival + delay] at Civic Auth.
    let windows: Vec<(Duration, Duration)> = auth
        .requests()
        .iter()
        .filter(|r| r.at + delay >= start && r.at <= end)
        .map(|r| {
            let from = r.at.saturating_duration_since(start);
            (from, from + delay + GAP_TOLERANCE)
        })
        .collect();
    let threshold = plan.refresh_threshold;
    let slow: Vec<_> = out
        .timeline
        .iter()
        .filter(|s| s.latency > threshold)
        .collect();
    let waited = slow
        .iter()
        .filter(|s| {
            windows
                .iter()
                .any(|(a, b)| s.due <= *b && s.due + s.latency >= *a)
        })
        .count() as u64;
    sidecar.finish();
    Ok(RefreshUnderLoad {
        token_ttl_s: plan.refresh_token_ttl,
        exchange_delay_ms: delay.as_millis(),
        rate: plan.refresh_rate,
        duration_s: plan.refresh_duration.as_secs_f64(),
        requests: out.total(),
        non_200: out.total() - out.ok(),
        exchanges: windows.len(),
        threshold_ms: threshold.as_millis(),
        slower_than_threshold: slow.len() as u64,
        waited_on_refresh: waited,
        cache_misses: counters.cache_misses,
        refreshes_started: counters.refreshes,
        p99_us: out.micros(0.99),
        max_us: out.latency.max() as f64 / 1e3,
    })
}

/// The least gap before attempt `k` (1-based: after `k` consecutive failures).
pub fn min_gap(k: u32) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << (k.saturating_sub(1)).min(20))
        .min(BACKOFF_MAX);
    exp / 2
}

/// Gaps between consecutive attempts, their minimum by the schedule, and how many were short.
pub fn check_schedule(attempts: &[Duration]) -> (Vec<f64>, Vec<f64>, usize) {
    let mut gaps = Vec::new();
    let mut mins = Vec::new();
    let mut short = 0;
    for (k, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].saturating_sub(pair[0]);
        let min = min_gap(k as u32 + 1);
        short += usize::from(gap + GAP_TOLERANCE < min);
        gaps.push(gap.as_secs_f64());
        mins.push(min.as_secs_f64());
    }
    (gaps, mins, short)
}

async fn outage(env: &Env) -> Result<OutageUnderLoad> {
    let plan = &env.plan;
    let auth = fake_auth().await?;
    let ok = AuthReply::ok_expires_in(plan.outage_token_ttl);
    auth.set_default(ok.clone());
    let sidecar = env
        .start_sidecar(Kind::Http, "outage", &auth, Subject::File)
        .await?;
    // The first token was just minted; from now on Civic Auth is down.
    auth.set_default(AuthReply::status(503));
    let outage_start = Instant::now();
    let running = tokio::spawn(load(
        Target::proxy("sidecar", sidecar.proxy_addr()),
        plan.outage_rate,
        plan.outage + plan.outage_recovery_window,
    ));
    tokio::time::sleep(plan.outage).await;
    auth.set_default(ok);
    let outage_end = Instant::now();
    let out = running
        .await
        .map_err(|e| BenchError::Check(format!("outage load: {e}")))??;
    sidecar.finish();

    let attempts: Vec<Duration> = auth
        .requests()
        .iter()
        .filter(|r| r.at >= outage_start && r.at < outage_end)
        .map(|r| r.at - outage_start)
        .collect();
    let (gaps_s, min_gaps_s, extra_attempts) = check_schedule(&attempts);
    // The timeline counts from the load's recorded start, a little after the outage began.
    let end_offset = outage_end.saturating_duration_since(out.recorded_from);
    let mut statuses_during = BTreeMap::new();
    let mut saw_failure = false;
    let mut recovered_after_s = None;
    for s in &out.timeline {
        if s.due < end_offset {
            *statuses_during.entry(s.status).or_default() += 1;
            saw_failure |= s.status != 200;
        } else if s.status == 200 && saw_failure && recovered_after_s.is_none() {
            recovered_after_s = Some((s.due - end_offset).as_secs_f64());
        } else if s.status != 200 {
            saw_failure = true;
        }
    }
    Ok(OutageUnderLoad {
        outage_s: plan.outage.as_secs_f64(),
        token_ttl_s: plan.outage_token_ttl,
        rate: plan.outage_rate,
        attempts: attempts.len(),
        attempt_offsets_s: attempts.iter().map(Duration::as_secs_f64).collect(),
        gaps_s,
        min_gaps_s,
        extra_attempts,
        statuses_during,
        recovered_after_s,
        recovery_window_s: plan.outage_recovery_window.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_check_counts_attempts_inside_a_step() {
        assert_eq!(min_gap(1), Duration::from_millis(500));
        assert_eq!(min_gap(3), Duration::from_secs(2));
        assert_eq!(min_gap(10), Duration::from_secs(30));
        let s = |v: f64| Duration::from_secs_f64(v);
        // 0.5, 1, 2 s steps respected.
        let (_, _, short) = check_schedule(&[s(0.0), s(0.6), s(1.7), s(3.9)]);
        assert_eq!(short, 0);
        // A second attempt 0.1 s into the 1 s step.
        let (gaps, mins, short) = check_schedule(&[s(0.0), s(0.6), s(0.7)]);
        assert_eq!(short, 1);
        assert_eq!(mins, vec![0.5, 1.0]);
        assert_eq!(gaps.len(), 2);
    }
}
