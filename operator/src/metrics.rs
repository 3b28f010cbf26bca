//! Prometheus metrics of the operator, all prefixed `civic_operator_`.
//!
//! | Metric | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `civic_operator_reconciles_total` | counter | `result` = `success`, `error` | finished reconciles |
//! | `civic_operator_reconcile_errors_total` | counter | `category` | failed reconciles by error category |
//! | `civic_operator_reconcile_duration_seconds` | histogram | | time per reconcile |
//! | `civic_operator_status_writes_total` | counter | | status patches sent (a no-op reconcile sends none) |
//! | `civic_operator_events_total` | counter | `type` = `Normal`, `Warning` | Events published on condition changes |
//! | `civic_operator_probes_total` | counter | `result` = `valid`, `invalid`, `error` | credential probes sent to Civic Auth |
//! | `civic_operator_leader` | gauge | | 1 while this replica holds the lease |
//! | `civic_operator_integration_ready` | gauge | `integration_namespace`, `integration` | 1 while the integration's `Ready` condition is `True`, else 0 (leader only) |
//! | `civic_operator_opted_in_pods_without_sidecar` | gauge (pods) | `integration_namespace`, `integration` | live pods its bindings select that carry no sidecar of theirs (leader only) |
//!
//! The two per-integration gauges are published by the replica holding the lease and dropped when
//! it loses it; their labels avoid `namespace`, which scrapes set to the operator's own.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The operator's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub status_writes: IntCounter,
    pub events: IntCounterVec,
    pub probes: IntCounterVec,
    pub leader: IntGauge,
    integration_ready: IntGaugeVec,
    pods_without_sidecar: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("civic_operator".into()), None)
            .expect("static registry prefix is valid");
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Finished reconciles by result"),
            &["result"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Failed reconciles by error category",
            ),
            &["category"],
        )
        .expect("valid metric");
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new("reconcile_duration_seconds", "Time per reconcile").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let status_writes = IntCounter::new(
            "status_writes_total",
            "Status patches sent; a no-op reconcile sends none",
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new("events_total", "Events published on condition changes"),
            &["type"],
        )
        .expect("valid metric");
        let probes = IntCounterVec::new(
            Opts::new(
                "probes_total",
                "Credential probes sent to Civic Auth, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let leader = IntGauge::new("leader", "1 while this replica holds the leader lease")
            .expect("valid metric");
        let integration_labels = ["integration_namespace", "integration"];
        let integration_ready = IntGaugeVec::new(
            Opts::new(
                "integration_ready",
                "1 while the CivicIntegration's Ready condition is True, else 0",
            ),
            &integration_labels,
        )
        .expect("valid metric");
        let pods_without_sidecar = IntGaugeVec::new(
            Opts::new(
                "opted_in_pods_without_sidecar",
                "Live opted-in pods the integration's bindings select that carry none of its sidecars",
            ),
            &integration_labels,
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(status_writes.clone()),
            Box::new(events.clone()),
            Box::new(probes.clone()),
            Box::new(leader.clone()),
            Box::new(integration_ready.clone()),
            Box::new(pods_without_sidecar.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Present from the start, so dashboards and tests see zeroes rather than gaps.
        for r in ["success", "error"] {
            reconciles.with_label_values(&[r]);
        }
        for r in ["valid", "invalid", "error"] {
            probes.with_label_values(&[r]);
        }
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            status_writes,
            events,
            probes,
            leader,
            integration_ready,
            pods_without_sidecar,
        }
    }

    /// Publishes what the last reconcile of one integration found.
    pub fn observe_integration(
        &self,
        namespace: &str,
        name: &str,
        ready: bool,
        unserved_pods: i64,
    ) {
        let labels = [namespace, name];
        self.integration_ready
            .with_label_values(&labels)
            .set(i64::from(ready));
        self.pods_without_sidecar
            .with_label_values(&labels)
            .set(unserved_pods);
    }

    /// Drops a deleted integration's series.
    pub fn forget_integration(&self, namespace: &str, name: &str) {
        let labels = [namespace, name];
        // Absent already (never reconciled) is fine.
        let _ = self.integration_ready.remove_label_values(&labels);
        let _ = self.pods_without_sidecar.remove_label_values(&labels);
    }

    /// Drops every integration's series: only the leader's view is current.
    pub fn forget_integrations(&self) {
        self.integration_ready.reset();
        self.pods_without_sidecar.reset();
    }

    /// The registry, for metrics defined elsewhere (the webhook's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new();
        m.reconciles.with_label_values(&["success"]).inc();
        m.reconcile_duration.observe(0.002);
        m.leader.set(1);
        let text = m.render();
        assert!(
            text.contains("civic_operator_reconciles_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("civic_operator_reconciles_total{result=\"error\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("civic_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("civic_operator_probes_total{result=\"invalid\"} 0"),
            "{text}"
        );
        assert!(text.contains("civic_operator_leader 1"), "{text}");
    }

    #[test]
    fn integration_series_come_and_go() {
        let m = Metrics::new();
        m.observe_integration("team-a", "civic", false, 3);
        let text = m.render();
        assert!(
            text.contains(
                "civic_operator_integration_ready{integration=\"civic\",integration_namespace=\"team-a\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("civic_operator_opted_in_pods_without_sidecar{integration=\"civic\",integration_namespace=\"team-a\"} 3"),
            "{text}"
        );
        m.observe_integration("team-a", "civic", true, 0);
        m.observe_integration("team-b", "civic", true, 0);
        assert!(m.render().contains(
            "civic_operator_integration_ready{integration=\"civic\",integration_namespace=\"team-a\"} 1"
        ));
        m.forget_integration("team-a", "civic");
        let text = m.render();
        assert!(!text.contains("integration_namespace=\"team-a\""), "{text}");
        assert!(text.contains("integration_namespace=\"team-b\""), "{text}");
        m.forget_integrations();
        assert!(!m.render().contains("integration_namespace"));
    }
}
