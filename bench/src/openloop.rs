//! Open-loop, fixed-rate load for latency: request `i` is due at `t0 + i / rate` whatever
//! happened to earlier requests, and its latency is counted from that due time whenever the
//! system under test held the connection past it (no coordinated omission). Requests are spread
//! round-robin over a few connections, each driven by its own thread; a thread that merely woke
//! late (its own timer slack) counts from the moment it sent, so generator noise is not charged
//! to the target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::Full;

use crate::client::{Connection, Target};
use crate::error::{BenchError, Result};

/// Builds each request (the same shape every time).
pub type MakeRequest = Arc<dyn Fn(&Target) -> Request<Full<Bytes>> + Send + Sync>;

/// One fixed-rate run.
#[derive(Clone)]
pub struct Spec {
    pub target: Target,
    /// Requests per second, all connections together.
    pub rate: f64,
    /// Requests due in this first part are sent but not recorded.
    pub warmup: Duration,
    /// The recorded part.
    pub duration: Duration,
    pub connections: usize,
    pub make: MakeRequest,
    /// Keep a [`Sample`] of every recorded request.
    pub timeline: bool,
}

/// One recorded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sample {
    /// When it was due, from the start of the recorded part.
    pub due: Duration,
    /// Its status, 0 for a transport error.
    pub status: u16,
    /// From start (see the module doc) to the end of the response body.
    pub latency: Duration,
}

/// What a run measured (recorded part only).
#[derive(Debug)]
pub struct Outcome {
    /// Latency of every recorded request that got an answer, nanoseconds.
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer (transport errors).
    pub errors: u64,
    /// Requests that could not start on time because their connection was still busy.
    pub held: u64,
    /// Every recorded request, by due time, when asked for.
    pub timeline: Vec<Sample>,
    /// When the recorded part began (`t0 + warmup`).
    pub recorded_from: Instant,
}

impl Outcome {
    /// Nothing recorded yet (a worker's start, and the merge of all workers).
    fn empty(recorded_from: Instant) -> Self {
        Outcome {
            latency: histogram(),
            statuses: BTreeMap::new(),
            errors: 0,
            held: 0,
            timeline: Vec::new(),
            recorded_from,
        }
    }

    pub fn ok(&self) -> u64 {
        self.statuses.get(&200).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors
    }

    /// Percentile in microseconds.
    pub fn micros(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1_000.0
    }

    /// Requests slower than `threshold`.
    pub fn slower_than(&self, threshold: Duration) -> u64 {
        let t = threshold.as_nanos() as u64;
        self.latency.count_between(t + 1, u64::MAX)
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs `spec` (blocking: call from a blocking context). The schedule starts `lead` from now so
/// every connection is open before the first request is due.
pub fn run(spec: &Spec) -> Result<Outcome> {
    let connections = spec.connections.max(1);
    let t0 = Instant::now() + Duration::from_millis(200);
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let total = ((spec.warmup + spec.duration).as_secs_f64() * spec.rate).ceil() as u64;
    let recorded_from = t0 + spec.warmup;
    let threads: Vec<_> = (0..connections)
        .map(|j| {
            let spec = spec.clone();
            std::thread::Builder::new()
                .name(format!("openloop-{j}"))
                .spawn(move || {
                    worker(
                        &spec,
                        j as u64,
                        connections as u64,
                        t0,
                        interval,
                        total,
                        recorded_from,
                    )
                })
                .map_err(|e| BenchError::io("open-loop thread", e))
        })
        .collect::<Result<_>>()?;
    let mut out = Outcome::empty(recorded_from);
    for t in threads {
        let part = t
            .join()
            .map_err(|_| BenchError::Check("an open-loop thread panicked".into()))??;
        out.latency
            .add(&part.latency)
            .map_err(|e| BenchError::Check(format!("merge histograms: {e}")))?;
        for (k, v) in part.statuses {
            *out.statuses.entry(k).or_default() += v;
        }
        out.errors += part.errors;
        out.held += part.held;
        out.timeline.extend(part.timeline);
    }
    out.timeline.sort_unstable();
    Ok(out)
}

fn worker(
    spec: &Spec,
    first: u64,
    step: u64,
    t0: Instant,
    interval: Duration,
    total: u64,
    recorded_from: Instant,
) -> Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("open-loop runtime", e))?;
    let mut conn: Option<Connection> = Some(rt.block_on(spec.target.connect())?);
    let mut out = Outcome::empty(recorded_from);
    let mut prev_done = t0;
    let mut i = first;
    while i < total {
        let due = t0 + Duration::from_nanos(interval.as_nanos() as u64 * i);
        i += step;
        let now = Instant::now();
        let start = if now < due {
            std::thread::sleep(due - now);
            Instant::now()
        } else if prev_done > due {
            // The target still had this connection busy when the request was due.
            out.held += u64::from(due >= recorded_from);
            due
        } else {
            now
        };
        let req = (spec.make)(&spec.target);
        let answer = rt.block_on(async {
            let c = match conn.take() {
                Some(c) if !c.is_closed() => c,
                _ => spec.target.connect().await?,
            };
            let mut c = c;
            let a = c.send(req).await;
            if a.is_ok() {
                conn = Some(c);
            }
            a
        });
        let done = Instant::now();
        prev_done = done;
        if due < recorded_from {
            continue;
        }
        let status = match answer {
            Ok(a) => {
                out.latency
                    .saturating_record((done - start).as_nanos().min(u64::MAX as u128) as u64);
                *out.statuses.entry(a.status.as_u16()).or_default() += 1;
                a.status.as_u16()
            }
            Err(_) => {
                out.errors += 1;
                0
            }
        };
        if spec.timeline {
            out.timeline.push(Sample {
                due: due - recorded_from,
                status,
                latency: done - start,
            });
        }
    }
    Ok(out)
}
