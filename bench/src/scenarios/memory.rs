//! Resident memory of nginx's worker and of the sidecar: idle, under small-body load, with 50
//! concurrent 1 MiB responses, per open SSE stream (1,000 streams, every event counted), and the
//! creep between the first and the last of three such load cycles. Fresh processes, plain
//! upstream; and ([`run_h2`]) the sidecar's RSS per SSE stream with the hub on HTTP/2 over TLS.

use std::time::Duration;

use bytes::Bytes;
use civic_testkit::hub::{HubReply, RecordedRequest, SseStep};
use civic_testkit::{FakeCivicAuth, FakeHub};
use http::Method;
use serde::Serialize;
use tokio::task::JoinSet;

use super::{Env, Kind, Proxy, with_peak_rss};
use crate::client::Target;
use crate::error::{BenchError, Result};
use crate::sidecar::Subject;

/// The SSE phase of each cycle: 1,000 streams opened at once, every event counted. KiB; lists
/// have one entry per cycle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SseFigures {
    #[serde(rename = "sse_before_kib")]
    pub before_kib: Vec<u64>,
    #[serde(rename = "sse_peak_kib")]
    pub peak_kib: Vec<u64>,
    /// (peak with all streams open − RSS just before) ÷ streams.
    #[serde(rename = "sse_per_stream_kib")]
    pub per_stream_kib: Vec<f64>,
    #[serde(rename = "sse_streams_opened")]
    pub streams_opened: Vec<u64>,
    #[serde(rename = "sse_events_expected")]
    pub events_expected: Vec<u64>,
    #[serde(rename = "sse_events_received")]
    pub events_received: Vec<u64>,
    #[serde(rename = "sse_events_lost")]
    pub events_lost: u64,
}

impl SseFigures {
    /// Runs one cycle's SSE phase through `proxy` and records it.
    async fn cycle(&mut self, proxy: &Proxy, plan: &crate::cli::Plan) -> Result<()> {
        let target = proxy.target();
        let before = proxy.rss_kib()?;
        let expected = plan.sse_streams as u64 * plan.sse_events;
        let (sse, peak) = with_peak_rss(
            &proxy.rss_pids(),
            sse_streams(&target, plan.sse_streams, plan.sse_events, plan.sse_every),
        )
        .await;
        let (opened, received) = sse?;
        self.before_kib.push(before);
        self.peak_kib.push(peak);
        self.per_stream_kib
            .push(peak.saturating_sub(before) as f64 / plan.sse_streams as f64);
        self.streams_opened.push(opened);
        self.events_expected.push(expected);
        self.events_received.push(received);
        self.events_lost += expected.saturating_sub(received);
        Ok(())
    }

    /// Every stream of every cycle opened and no event lost, within `max_kib` per stream.
    pub fn meets(&self, streams: usize, max_kib: f64) -> bool {
        self.events_lost == 0
            && self.streams_opened.iter().all(|n| *n as usize == streams)
            && self.per_stream_kib.iter().all(|k| *k <= max_kib)
    }
}

/// One proxy's memory figures, KiB; lists have one entry per cycle.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryFigures {
    pub proxy: &'static str,
    pub idle_kib: u64,
    pub load_peak_kib: Vec<u64>,
    pub large_peak_kib: Vec<u64>,
    pub large_responses: u64,
    /// Large responses that were not 200 with exactly the expected length.
    pub large_bad: u64,
    #[serde(flatten)]
    pub sse: SseFigures,
    pub after_cycle_kib: Vec<u64>,
    /// RSS after the last cycle − after the first.
    pub creep_kib: i64,
    /// nginx's master process (constant; not in the figures above).
    pub master_kib: Option<u64>,
}

pub async fn run(env: &Env, auth: &FakeCivicAuth) -> Result<Vec<MemoryFigures>> {
    let mut out = Vec::new();
    for name in ["nginx", "sidecar"] {
        let proxy = match name {
            "nginx" => Proxy::Nginx(env.start_nginx(Kind::Http, "memory")?),
            _ => Proxy::Sidecar(
                env.start_sidecar(Kind::Http, "memory", auth, Subject::File)
                    .await?,
            ),
        };
        let figures = measure(env, &proxy).await?;
        eprintln!(
            "  {:7} idle {} KiB, per SSE stream {:.1} KiB, creep {} KiB, lost events {}",
            name,
            figures.idle_kib,
            figures
                .sse
                .per_stream_kib
                .first()
                .copied()
                .unwrap_or(f64::NAN),
            figures.creep_kib,
            figures.sse.events_lost
        );
        out.push(figures);
    }
    Ok(out)
}

async fn measure(env: &Env, proxy: &Proxy) -> Result<MemoryFigures> {
    let plan = &env.plan;
    let target = proxy.target();
    let pids = proxy.rss_pids();
    // Warm: a few requests on a few connections, then let it settle.
    for _ in 0..4 {
        let mut c = target.connect().await?;
        for _ in 0..50 {
            let a = c.send(target.small_post()).await?;
            if a.status != 200 {
                return Err(BenchError::Check(format!(
                    "{} answered {} while warming up",
                    proxy.name(),
                    a.status
                )));
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut f = MemoryFigures {
        proxy: proxy.name(),
        idle_kib: proxy.rss_kib()?,
        load_peak_kib: Vec::new(),
        large_peak_kib: Vec::new(),
        large_responses: 0,
        large_bad: 0,
        sse: SseFigures::default(),
        after_cycle_kib: Vec::new(),
        creep_kib: 0,
        master_kib: match proxy {
            Proxy::Nginx(n) => n.master_rss_kib().ok(),
            Proxy::Sidecar(_) => None,
        },
    };
    for _ in 0..plan.memory_cycles {
        // SSE streams first: in the first cycle they are measured on the warmed-up idle heap,
        // not on what the large responses left behind.
        tokio::time::sleep(Duration::from_millis(500)).await;
        f.sse.cycle(proxy, plan).await?;

        let (load, peak) = with_peak_rss(
            &pids,
            env.wrk.run(&target, plan.wrk_connections, plan.memory_load),
        )
        .await;
        load?;
        f.load_peak_kib.push(peak);

        let (large, peak) = with_peak_rss(
            &pids,
            large_responses(
                &target,
                plan.large_clients,
                plan.large_bytes,
                plan.large_duration,
            ),
        )
        .await;
        let (n, bad) = large?;
        f.large_responses += n;
        f.large_bad += bad;
        f.large_peak_kib.push(peak);

        tokio::time::sleep(Duration::from_secs(1)).await;
        f.after_cycle_kib.push(proxy.rss_kib()?);
    }
    if let (Some(first), Some(last)) = (f.after_cycle_kib.first(), f.after_cycle_kib.last()) {
        f.creep_kib = *last as i64 - *first as i64;
    }
    Ok(f)
}

/// `clients` connections each fetching `bytes`-long answers back to back for `duration`.
/// Returns (responses, bad responses).
async fn large_responses(
    target: &Target,
    clients: usize,
    bytes: usize,
    duration: Duration,
) -> Result<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + duration;
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let target = target.clone();
        set.spawn(async move {
            let mut c = target.connect().await?;
            let (mut n, mut bad) = (0u64, 0u64);
            while tokio::time::Instant::now() < deadline {
                let req = target.request(
                    Method::POST,
                    &format!("bytes={bytes}"),
                    Bytes::from_static(crate::client::SMALL_REQUEST.as_bytes()),
                );
                let a = c.send(req).await?;
                n += 1;
                bad += u64::from(a.status != 200 || a.bytes != bytes as u64);
            }
            Ok::<_, BenchError>((n, bad))
        });
    }
    let (mut n, mut bad) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (a, b) = r.map_err(|e| BenchError::Check(format!("large-response task: {e}")))??;
        n += a;
        bad += b;
    }
    Ok((n, bad))
}

/// Opens `streams` SSE streams of `events` events each (one every `every`) and reads them to
/// the end. Returns (streams answered 200, events received).
async fn sse_streams(
    target: &Target,
    streams: usize,
    events: u64,
    every: Duration,
) -> Result<(u64, u64)> {
    let query = format!("sse={events}&every_ms={}", every.as_millis());
    let mut set = JoinSet::new();
    for i in 0..streams {
        // Batches of 100: stay within the listeners' accept backlogs.
        if i > 0 && i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let target = target.clone();
        let query = query.clone();
        set.spawn(async move {
            let mut c = target.connect().await?;
            c.send(target.request(Method::GET, &query, Bytes::new()))
                .await
        });
    }
    let (mut opened, mut received) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(a)) if a.status == 200 => {
                opened += 1;
                received += a.events;
            }
            _ => {}
        }
    }
    Ok((opened, received))
}

/// The sidecar's RSS per open SSE stream when the hub speaks HTTP/2 over TLS (the testkit's
/// fake hub offering h2, `CIVIC_HUB_PROTOCOL=auto`): the streams share the pool's HTTP/2
/// connections (at most 100 streams each) instead of one hub connection per stream.
#[derive(Debug, Clone, Serialize)]
pub struct SseH2Figures {
    pub idle_kib: u64,
    #[serde(flatten)]
    pub sse: SseFigures,
    /// Hub connections the sidecar opened in all, and whether every request came over HTTP/2.
    pub hub_connections: usize,
    pub all_h2: bool,
}

/// The fake hub's SSE stream for `GET ?sse=N&every_ms=M`: the same events, spaced the same way,
/// as the bench upstream's.
fn h2_hub_reply(req: &RecordedRequest) -> HubReply {
    if req.method != "GET" {
        return civic_testkit::hub::default_reply(req);
    }
    let param = |name: &str| -> u64 {
        req.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(1)
    };
    let (events, every) = (param("sse"), Duration::from_millis(param("every_ms")));
    let mut steps = Vec::new();
    for seq in 0..events {
        if seq > 0 {
            steps.push(SseStep::Wait(every));
        }
        steps.push(SseStep::Event(format!(
            "id: {seq}\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":\"bench\",\"progress\":{seq}}}}}\n\n"
        )));
    }
    HubReply::sse(steps)
}

pub async fn run_h2(env: &Env, auth: &FakeCivicAuth) -> Result<SseH2Figures> {
    let plan = &env.plan;
    let hub = FakeHub::start_tls(&env.ca)
        .await
        .map_err(|e| BenchError::setup("start the fake hub", e))?;
    hub.set_responder(h2_hub_reply);
    let sidecar = env
        .start_sidecar_for_hub(
            "memory-h2",
            &format!("https://localhost:{}/hub/mcp", hub.addr().port()),
            auth,
        )
        .await?;
    let proxy = Proxy::Sidecar(sidecar);
    let target = proxy.target();
    for _ in 0..4 {
        let mut c = target.connect().await?;
        for _ in 0..50 {
            let a = c.send(target.small_post()).await?;
            if a.status != 200 {
                return Err(BenchError::Check(format!(
                    "sidecar (h2 hub) answered {} while warming up",
                    a.status
                )));
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut f = SseH2Figures {
        idle_kib: proxy.rss_kib()?,
        sse: SseFigures::default(),
        hub_connections: 0,
        all_h2: false,
    };
    for _ in 0..plan.memory_cycles {
        tokio::time::sleep(Duration::from_millis(500)).await;
        f.sse.cycle(&proxy, plan).await?;
    }
    f.hub_connections = hub.connections();
    f.all_h2 = hub
        .requests()
        .iter()
        .all(|r| r.version == http::Version::HTTP_2);
    eprintln!(
        "  sidecar, h2 hub: idle {} KiB, per SSE stream {:?} KiB, lost events {}, {} hub connection(s), all h2: {}",
        f.idle_kib, f.sse.per_stream_kib, f.sse.events_lost, f.hub_connections, f.all_h2
    );
    if let Proxy::Sidecar(s) = proxy {
        s.finish();
    }
    Ok(f)
}
