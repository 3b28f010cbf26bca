//! Prometheus metrics of the sidecar (prefix `civic_sidecar_`). No label carries a per-request or
//! per-user value: labels are status codes, error categories and the `profile` names of the
//! binding (`default` for `/hub/mcp`; empty for a request that matched no profile).
//!
//! | Metric | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `civic_sidecar_requests_total` | counter | `code`, `profile` | Workload requests answered, by HTTP status |
//! | `civic_sidecar_upstream_request_duration_seconds` | histogram | | Hub response time (to headers) |
//! | `civic_sidecar_upstream_connections_total` | counter | `result` | Upstream connections opened |
//! | `civic_sidecar_hub_connections` | gauge | `protocol` | Hub connections open, by protocol (`h2`, `http1`) |
//! | `civic_sidecar_hub_requests_waiting` | gauge | | Requests waiting for a hub connection to open |
//! | `civic_sidecar_hub_streams_per_connection` | histogram | | Requests in flight on the hub connection a request was sent on, itself included (always 1 on HTTP/1.1) |
//! | `civic_sidecar_exchanges_total` | counter | `result`, `profile` | Token exchanges: `ok` or an error category |
//! | `civic_sidecar_exchange_duration_seconds` | histogram | | Token-exchange call duration |
//! | `civic_sidecar_token_cache_hits_total` | counter | | Requests served from a cached token |
//! | `civic_sidecar_token_cache_misses_total` | counter | | Requests that needed an exchange |
//! | `civic_sidecar_token_refreshes_total` | counter | | Background refreshes started ahead of expiry |
//! | `civic_sidecar_cached_tokens` | gauge | | Tokens held in the cache |
//! | `civic_sidecar_open_streams` | gauge | | Hub responses currently streaming to workloads |
//! | `civic_sidecar_requests_abandoned_total` | counter | | Requests whose workload went away before their answer was ready |
//! | `civic_sidecar_token_expiry_seconds` | gauge | | Seconds until the current token is unusable (soonest in header mode; NaN when unknown) |
//! | `civic_sidecar_build_info` | gauge | `version` | Always 1 |

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    PullingGauge, Registry, TextEncoder,
};

/// All metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `civic_sidecar_requests_total{code,profile}`.
    pub requests: IntCounterVec,
    /// `civic_sidecar_upstream_request_duration_seconds`.
    pub upstream_duration: Histogram,
    /// `civic_sidecar_upstream_connections_total{result}`.
    pub upstream_connections: IntCounterVec,
    /// `civic_sidecar_hub_connections{protocol}`.
    pub hub_connections: IntGaugeVec,
    /// `civic_sidecar_hub_requests_waiting`.
    pub hub_requests_waiting: IntGauge,
    /// `civic_sidecar_hub_streams_per_connection`.
    pub hub_streams_per_connection: Histogram,
    /// `civic_sidecar_exchanges_total{result,profile}`.
    pub exchanges: IntCounterVec,
    /// `civic_sidecar_exchange_duration_seconds`.
    pub exchange_duration: Histogram,
    /// `civic_sidecar_token_cache_hits_total`.
    pub cache_hits: IntCounter,
    /// `civic_sidecar_token_cache_misses_total`.
    pub cache_misses: IntCounter,
    /// `civic_sidecar_token_refreshes_total`.
    pub refreshes: IntCounter,
    /// `civic_sidecar_cached_tokens`.
    pub cached_tokens: IntGauge,
    /// `civic_sidecar_open_streams`.
    pub open_streams: IntGauge,
    /// `civic_sidecar_requests_abandoned_total`.
    pub abandoned: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "civic_sidecar_requests_total",
                "Workload requests answered, by HTTP status code and profile.",
            ),
            &["code", "profile"],
        )
        .expect("valid metric");
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "civic_sidecar_upstream_request_duration_seconds",
                "Time from sending a request to the hub to receiving its response headers.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )
        .expect("valid metric");
        let upstream_connections = IntCounterVec::new(
            Opts::new(
                "civic_sidecar_upstream_connections_total",
                "Connections opened to the hub, by result (ok, error, timeout).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let exchanges = IntCounterVec::new(
            Opts::new(
                "civic_sidecar_exchanges_total",
                "Token exchanges with Civic Auth, by result (ok or an error category) and profile.",
            ),
            &["result", "profile"],
        )
        .expect("valid metric");
        let exchange_duration = Histogram::with_opts(
            HistogramOpts::new(
                "civic_sidecar_exchange_duration_seconds",
                "Duration of token-exchange calls to Civic Auth.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
            ]),
        )
        .expect("valid metric");
        let cache_hits = IntCounter::new(
            "civic_sidecar_token_cache_hits_total",
            "Requests served with a cached token.",
        )
        .expect("valid metric");
        let cache_misses = IntCounter::new(
            "civic_sidecar_token_cache_misses_total",
            "Requests that found no usable cached token.",
        )
        .expect("valid metric");
        let refreshes = IntCounter::new(
            "civic_sidecar_token_refreshes_total",
            "Background token refreshes started ahead of expiry.",
        )
        .expect("valid metric");
        let cached_tokens =
            IntGauge::new("civic_sidecar_cached_tokens", "Tokens held in the cache.")
                .expect("valid metric");
        let open_streams = IntGauge::new(
            "civic_sidecar_open_streams",
            "Hub responses currently streaming to workloads.",
        )
        .expect("valid metric");
        let abandoned = IntCounter::new(
            "civic_sidecar_requests_abandoned_total",
            "Requests whose workload went away before their answer was ready.",
        )
        .expect("valid metric");
        let hub_connections = IntGaugeVec::new(
            Opts::new(
                "civic_sidecar_hub_connections",
                "Hub connections open, by protocol (h2 or http1).",
            ),
            &["protocol"],
        )
        .expect("valid metric");
        for protocol in ["h2", "http1"] {
            hub_connections.with_label_values(&[protocol]).set(0);
        }
        let hub_requests_waiting = IntGauge::new(
            "civic_sidecar_hub_requests_waiting",
            "Requests waiting for a hub connection to open.",
        )
        .expect("valid metric");
        let hub_streams_per_connection = Histogram::with_opts(
            HistogramOpts::new(
                "civic_sidecar_hub_streams_per_connection",
                "Requests in flight on the hub connection a request was sent on, itself included.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0]),
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("civic_sidecar_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_duration.clone()),
            Box::new(upstream_connections.clone()),
            Box::new(hub_connections.clone()),
            Box::new(hub_requests_waiting.clone()),
            Box::new(hub_streams_per_connection.clone()),
            Box::new(exchanges.clone()),
            Box::new(exchange_duration.clone()),
            Box::new(cache_hits.clone()),
            Box::new(cache_misses.clone()),
            Box::new(refreshes.clone()),
            Box::new(cached_tokens.clone()),
            Box::new(open_streams.clone()),
            Box::new(abandoned.clone()),
            Box::new(build_info),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Self {
            registry,
            requests,
            upstream_duration,
            upstream_connections,
            hub_connections,
            hub_requests_waiting,
            hub_streams_per_connection,
            exchanges,
            exchange_duration,
            cache_hits,
            cache_misses,
            refreshes,
            cached_tokens,
            open_streams,
            abandoned,
        }
    }

    /// Registers `civic_sidecar_token_expiry_seconds`, computed at each scrape by `seconds`
    /// (`None` is exported as NaN).
    pub fn register_token_expiry(&self, seconds: impl Fn() -> Option<f64> + Send + Sync + 'static) {
        let gauge = PullingGauge::new(
            "civic_sidecar_token_expiry_seconds",
            "Seconds until the current token stops being used (soonest in header mode; NaN when unknown).",
            Box::new(move || seconds().unwrap_or(f64::NAN)),
        )
        .expect("valid metric");
        // A second registration (tests building two servers on one Metrics) is harmless.
        let _ = self.registry.register(Box::new(gauge));
    }

    /// Counts one answered workload request for `profile` ("" when it matched none).
    pub fn observe_request(&self, status: http::StatusCode, profile: &str) {
        self.requests
            .with_label_values(&[status.as_str(), profile])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_metric_with_prefix() {
        let m = Metrics::new();
        m.observe_request(http::StatusCode::OK, "default");
        m.exchanges.with_label_values(&["ok", "billing"]).inc();
        m.upstream_connections.with_label_values(&["ok"]).inc();
        m.register_token_expiry(|| Some(42.0));
        let text = m.encode();
        for name in [
            "civic_sidecar_requests_total{code=\"200\",profile=\"default\"} 1",
            "civic_sidecar_upstream_request_duration_seconds_bucket",
            "civic_sidecar_exchanges_total{profile=\"billing\",result=\"ok\"} 1",
            "civic_sidecar_exchange_duration_seconds_bucket",
            "civic_sidecar_token_cache_hits_total 0",
            "civic_sidecar_token_cache_misses_total 0",
            "civic_sidecar_token_refreshes_total 0",
            "civic_sidecar_open_streams 0",
            "civic_sidecar_requests_abandoned_total 0",
            "civic_sidecar_cached_tokens 0",
            "civic_sidecar_hub_connections{protocol=\"h2\"} 0",
            "civic_sidecar_hub_connections{protocol=\"http1\"} 0",
            "civic_sidecar_hub_requests_waiting 0",
            "civic_sidecar_hub_streams_per_connection_bucket",
            "civic_sidecar_token_expiry_seconds 42",
            "civic_sidecar_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("civic_sidecar_"), "{line}");
        }
    }
}
