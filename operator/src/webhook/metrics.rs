//! Metrics of the admission webhook and its certificates, registered in the operator's registry
//! (prefix `civic_operator_`).
//!
//! | Metric | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `civic_operator_admissions_total` | counter | `outcome` = `injected`, `already_injected`, `no_match`, `denied`, `skipped`, `invalid` | admission reviews answered |
//! | `civic_operator_admission_duration_seconds` | histogram | | time to answer one review |
//! | `civic_operator_admission_live_reads_total` | counter | `result` = `ok`, `error`, `timeout` | CivicIntegration reads that bypassed the cache |
//! | `civic_operator_webhook_cert_writes_total` | counter | `reason` = `created`, `renewed`, `staged`, `rotated`, `pruned` | writes of the webhook TLS Secret |
//! | `civic_operator_webhook_cert_expiry_timestamp_seconds` | gauge | | expiry of the serving certificate in use |
//! | `civic_operator_webhook_cert_errors_total` | counter | | failed certificate sync rounds |

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::certs::CertMetrics;

/// Outcomes of one admission review.
pub const OUTCOMES: [&str; 6] = [
    "injected",
    "already_injected",
    "no_match",
    "denied",
    "skipped",
    "invalid",
];

#[derive(Clone)]
pub struct WebhookMetrics {
    pub admissions: IntCounterVec,
    pub duration: Histogram,
    pub live_reads: IntCounterVec,
    pub cert: CertMetrics,
}

impl WebhookMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let admissions = IntCounterVec::new(
            Opts::new("admissions_total", "Admission reviews answered, by outcome"),
            &["outcome"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "admission_duration_seconds",
                "Time to answer one admission review",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 2.5,
            ]),
        )?;
        let live_reads = IntCounterVec::new(
            Opts::new(
                "admission_live_reads_total",
                "CivicIntegration reads that bypassed the cache, by result",
            ),
            &["result"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "webhook_cert_writes_total",
                "Writes of the webhook TLS Secret, by reason",
            ),
            &["reason"],
        )?;
        let expiry = IntGauge::new(
            "webhook_cert_expiry_timestamp_seconds",
            "Expiry of the webhook serving certificate in use (Unix seconds)",
        )?;
        let errors = IntCounter::new(
            "webhook_cert_errors_total",
            "Failed webhook certificate sync rounds",
        )?;
        registry.register(Box::new(admissions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(live_reads.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(expiry.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        for o in OUTCOMES {
            admissions.with_label_values(&[o]);
        }
        for r in ["ok", "error", "timeout"] {
            live_reads.with_label_values(&[r]);
        }
        Ok(Self {
            admissions,
            duration,
            live_reads,
            cert: CertMetrics {
                writes,
                expiry,
                errors,
            },
        })
    }

    /// Metrics in a private registry (benchmarks, tests).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry has no duplicates")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn registers_with_the_operator_prefix() {
        let registry = Registry::new_custom(Some("civic_operator".into()), None).unwrap();
        let m = WebhookMetrics::register(&registry).unwrap();
        m.admissions.with_label_values(&["injected"]).inc();
        m.duration.observe(0.0003);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("civic_operator_admissions_total{outcome=\"injected\"} 1"));
        assert!(text.contains("civic_operator_admissions_total{outcome=\"denied\"} 0"));
        assert!(text.contains("civic_operator_admission_duration_seconds_count 1"));
        assert!(text.contains("civic_operator_webhook_cert_expiry_timestamp_seconds 0"));
        assert!(
            WebhookMetrics::register(&registry).is_err(),
            "registered once"
        );
    }
}
