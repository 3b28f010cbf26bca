// Issue 7, load: the real sidecar under sustained request load while its token is refreshed
// every couple of seconds and the subject token file rotates, with 1,000 SSE streams open the
// whole time. Every request must get 200, every stream must deliver every event in order and
// end cleanly, exchanges stay bounded by the token lifetime (not by the request count), and the
// sidecar's RSS must not creep: at most [`CREEP_BOUND_KIB`] between the end of the warm-up and
// the end of the run (the benchmark's bound).
//
// CI runs it for [`DEFAULT_SECS`]; `CIVIC_LOAD_SECS=300` runs longer, `CIVIC_LOAD_STREAMS` and
// `CIVIC_LOAD_RPS` change the shape. Figures are printed (run with `--no-capture`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use civic_testkit::client::KeepAlive;
use civic_testkit::hub::default_reply;
use civic_testkit::{AuthReply, HubReply, SseStep, client, jwt};
use common::Setup;
use http::Method;
use http_body_util::Full;
use serde_json::json;

const DEFAULT_SECS: u64 = 45;
const DEFAULT_STREAMS: usize = 1_000;
const DEFAULT_RPS: u64 = 200;
/// Token lifetime from the fake Civic Auth: refreshed every 2 s (`expires_in − min(30, ttl/2)`).
const TOKEN_TTL_SECS: u64 = 4;
/// The subject token file is replaced this often (the kubelet rotating a projected token).
const SUBJECT_ROTATION: Duration = Duration::from_secs(5);
/// One event per stream this often.
const EVENT_INTERVAL: Duration = Duration::from_secs(2);
/// RSS growth allowed after the warm-up (docs/architecture.md §7, the benchmark's creep bound).
const CREEP_BOUND_KIB: u64 = 512;
/// Time to open every stream plus a warm-up (several token refreshes) before the RSS baseline.
const OPEN_AND_WARMUP: Duration = Duration::from_secs(15);
/// Request workers, each on its own kept-alive connection.
const WORKERS: u64 = 8;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The soft limit on open files of this process (the sidecar inherits it).
fn nofile_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

fn event(stream: usize, n: u64) -> String {
    civic_testkit::hub::sse_message(&json!({
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"stream": stream, "n": n},
    }))
}

/// Whether the hub's answer is this call's own `tools/list` echo.
fn echoes(body: &[u8], id: u64) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v["id"] == id && v["result"]["echo"] == "tools/list")
}

#[derive(Debug, Default)]
struct WorkerReport {
    ok: u64,
    /// `(status, echoed)` of every answer that was not a 200 with the right body; 0 = no answer.
    failures: Vec<(u16, bool)>,
    reconnects: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_rotating_tokens_1000_streams_no_error_no_creep() {
    let secs = env_u64("CIVIC_LOAD_SECS", DEFAULT_SECS).max(30);
    let streams = env_u64("CIVIC_LOAD_STREAMS", DEFAULT_STREAMS as u64) as usize;
    let rps = env_u64("CIVIC_LOAD_RPS", DEFAULT_RPS).max(WORKERS);
    // Each stream holds a workload socket in this process, and an inbound and an upstream
    // socket in the sidecar, plus a hub socket here again.
    let need = 2 * streams as u64 + 512;
    let have = nofile_soft_limit().unwrap_or(0);
    assert!(
        have >= need,
        "open-file limit {have} < {need} for {streams} streams: raise `ulimit -n`"
    );

    // Every stream plays events until one shared deadline, so all of them are open through the
    // whole measured window however long opening them took, and end on their own just after it.
    // Opening and warm-up (a few token refreshes) get OPEN_AND_WARMUP before the RSS baseline.
    let t_start = Instant::now();
    let warm_until = t_start + OPEN_AND_WARMUP;
    let measured_end = warm_until + Duration::from_secs(secs);
    let streams_end = measured_end + Duration::from_secs(4);
    // Events each stream was scripted with, by stream number (set by the hub when it opens).
    let scripted: Arc<Mutex<Vec<Option<u64>>>> = Arc::new(Mutex::new(vec![None; streams]));

    let env = Setup::new("load_sustained_rotating_1000_streams")
        .start_with(|auth, hub| {
            auth.set_default(AuthReply::ok_expires_in(TOKEN_TTL_SECS));
            let scripted = scripted.clone();
            hub.set_responder(move |req| {
                if req.method != "GET" {
                    return default_reply(req);
                }
                // The stream number comes from the query, so each stream's events are its own.
                let stream: usize = req
                    .query
                    .as_deref()
                    .and_then(|q| q.strip_prefix("stream="))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX);
                let left = streams_end.saturating_duration_since(Instant::now());
                let count = (left.as_millis() / EVENT_INTERVAL.as_millis()) as u64;
                if let Some(slot) = scripted.lock().unwrap().get_mut(stream) {
                    *slot = Some(count);
                }
                HubReply::sse(
                    (0..count)
                        .flat_map(|n| {
                            [
                                SseStep::Wait(EVENT_INTERVAL),
                                SseStep::Event(event(stream, n)),
                            ]
                        })
                        .collect(),
                )
            });
        })
        .await
        .unwrap();
    let addr = env.addr();

    // --- 1,000 SSE streams, opened in batches so the accept queue never overflows -------------
    let opened = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(streams);
    for batch in (0..streams).collect::<Vec<_>>().chunks(50) {
        let mut opening = Vec::new();
        for &i in batch {
            let req = client::mcp_request(addr, Method::GET)
                .uri(format!("/hub/mcp?stream={i}"))
                .header("accept", "text/event-stream")
                .body(Full::new(Bytes::new()))
                .unwrap();
            opening.push(tokio::spawn(
                async move { (i, client::open(addr, req).await) },
            ));
        }
        for o in opening {
            let (i, resp) = o.await.unwrap();
            let resp = resp.unwrap_or_else(|e| panic!("stream {i} did not open: {e:#}"));
            assert_eq!(resp.status, 200, "stream {i}");
            opened.fetch_add(1, Ordering::Relaxed);
            let mut sse = resp.into_sse();
            readers.push(tokio::spawn(async move {
                // Every event, in order, then a clean end.
                let mut next = 0u64;
                loop {
                    match sse.next_data_event(EVENT_INTERVAL * 15).await {
                        Ok(Some(ev)) => {
                            let data: serde_json::Value =
                                serde_json::from_str(&client::sse_data(&ev)).map_err(|e| {
                                    format!("stream {i}: event {next} is not JSON: {e}")
                                })?;
                            let (s, n) = (&data["params"]["stream"], &data["params"]["n"]);
                            if *s != i || *n != next {
                                return Err(format!(
                                    "stream {i}: expected event {next}, got stream {s} event {n}"
                                ));
                            }
                            next += 1;
                        }
                        Ok(None) => return Ok((i, next)),
                        Err(e) => return Err(format!("stream {i} after {next} events: {e:#}")),
                    }
                }
            }));
        }
    }
    let open_time = t_start.elapsed();
    assert!(
        Instant::now() + Duration::from_secs(5) < warm_until,
        "opening {streams} streams took {open_time:?}, leaving no warm-up before the baseline"
    );
    assert!(
        env.hub
            .wait_open_streams(streams, Duration::from_secs(10))
            .await,
        "the hub sees {} of {streams} streams open",
        env.hub.open_streams()
    );

    // --- request load on kept-alive connections, paced ------------------------------------------
    let stop = Arc::new(AtomicBool::new(false));
    let per_worker = Duration::from_secs_f64(WORKERS as f64 / rps as f64);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut report = WorkerReport::default();
                let mut conn = KeepAlive::connect(addr).await.ok();
                let mut tick = tokio::time::interval(per_worker);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut id = w * 10_000_000;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    id += 1;
                    if conn.is_none() {
                        report.reconnects += 1;
                        conn = KeepAlive::connect(addr).await.ok();
                    }
                    let answer = match conn.as_mut() {
                        Some(c) => c
                            .call(id)
                            .await
                            .ok()
                            .map(|(status, body)| (status, echoes(&body, id))),
                        None => None,
                    };
                    match answer {
                        Some((200, true)) => report.ok += 1,
                        Some(other) => report.failures.push(other),
                        None => {
                            report.failures.push((0, false));
                            conn = None;
                        }
                    }
                }
                report
            })
        })
        .collect();

    // --- subject rotation and RSS samples ------------------------------------------------------
    let mut rotations = 0u32;
    let mut next_rotation = Instant::now() + SUBJECT_ROTATION;
    let mut baseline: Option<(u64, usize)> = None;
    let mut samples: Vec<u64> = Vec::new();
    while Instant::now() < measured_end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if Instant::now() >= next_rotation {
            rotations += 1;
            env.rotate_subject(&jwt::mint_subject(
                &format!("system:serviceaccount:team-a:agent-{rotations}"),
                Duration::from_secs(3600),
            ));
            next_rotation += SUBJECT_ROTATION;
        }
        if Instant::now() >= warm_until {
            let rss = env.sidecar.rss_kib().expect("the sidecar's VmRSS");
            if baseline.is_none() {
                baseline = Some((rss, env.auth.calls()));
            }
            samples.push(rss);
        }
    }
    let final_rss = env.sidecar.rss_kib().expect("the sidecar's VmRSS");
    let hub_open_at_end = env.hub.open_streams();
    stop.store(true, Ordering::Relaxed);
    let mut total = WorkerReport::default();
    for w in workers {
        let r = w.await.unwrap();
        total.ok += r.ok;
        total.reconnects += r.reconnects;
        total.failures.extend(r.failures);
    }
    let metrics = env.sidecar.metrics().await.unwrap();
    let open_metric = metrics
        .lines()
        .find_map(|l| l.strip_prefix("civic_sidecar_open_streams "))
        .map(str::to_owned);

    // Streams end on their own once their script is played.
    let mut delivered = 0u64;
    let mut stream_errors = Vec::new();
    for r in readers {
        match r.await.unwrap() {
            Ok((i, n)) if Some(n) == scripted.lock().unwrap()[i] => delivered += n,
            Ok((i, n)) => stream_errors.push(format!(
                "stream {i} ended cleanly after {n} of {:?} events",
                scripted.lock().unwrap()[i]
            )),
            Err(e) => stream_errors.push(e),
        }
    }
    let scripted_total: u64 = scripted.lock().unwrap().iter().flatten().sum();
    let (base_rss, base_calls) = baseline.expect("at least one sample after the warm-up");
    let max_rss = samples.iter().copied().max().unwrap_or(final_rss);
    let exchanges = env.auth.calls();
    eprintln!(
        "load: {secs} s measured after {} s warm-up; {streams} streams opened in {:.1} s; \
         {} requests ok at ~{rps}/s, {} failed, {} reconnects; {exchanges} exchanges \
         ({} during the measured window), {rotations} subject rotations; {delivered} events \
         delivered of {}; RSS baseline {base_rss} KiB, final {final_rss} KiB (growth {} KiB), \
         max {max_rss} KiB; open_streams metric at end {open_metric:?}",
        OPEN_AND_WARMUP.as_secs(),
        open_time.as_secs_f64(),
        total.ok,
        total.failures.len(),
        total.reconnects,
        exchanges - base_calls,
        scripted_total,
        final_rss as i64 - base_rss as i64,
    );

    assert!(
        total.failures.is_empty(),
        "every request gets 200 with its own answer; failures (status, echoed): {:?}",
        &total.failures[..total.failures.len().min(20)]
    );
    let expected = secs * rps / 2;
    assert!(
        total.ok >= expected,
        "load was applied: {} requests, expected at least {expected}",
        total.ok
    );
    assert!(
        stream_errors.is_empty(),
        "{} of {streams} streams lost events, e.g. {:?}",
        stream_errors.len(),
        &stream_errors[..stream_errors.len().min(5)]
    );
    assert_eq!(hub_open_at_end, streams, "no stream was cut during the run");
    assert_eq!(env.hub.aborted_streams(), 0, "no stream was cut");
    assert_eq!(
        open_metric.as_deref(),
        Some(streams.to_string().as_str()),
        "the sidecar counts every open stream"
    );
    // Refreshed every ~2 s and on every subject rotation; never per request.
    let window = exchanges - base_calls;
    assert!(
        window as u64 >= secs / 4,
        "the token was refreshed during the run ({window} exchanges in {secs} s)"
    );
    assert!(
        (window as u64) <= secs + u64::from(rotations) + 5,
        "exchanges bounded by the token lifetime, not the load ({window} in {secs} s)"
    );
    assert!(
        final_rss <= base_rss + CREEP_BOUND_KIB,
        "RSS crept {} KiB after the warm-up (bound {CREEP_BOUND_KIB} KiB): {base_rss} → \
         {final_rss} KiB",
        final_rss - base_rss
    );
    env.finish();
}
