//! The admission handler (`civic_operator::webhook::admission::Admission::review`) on a typical
//! Deployment pod that matches a cached CivicIntegration: AdmissionReview bytes in, JSON patch
//! out, timed call by call on one thread. No HTTP or TLS: that is the apiserver's cost, and the
//! webhook's listener is plain hyper + rustls.
//!
//! Each call is timed twice: wall clock (what the apiserver waits) and the thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), which leaves out the time the thread was preempted. On a loaded
//! 2-core machine the wall-clock tail is the scheduler's; the CPU-time tail is the handler's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use civic_operator::crd::CivicIntegration;
use civic_operator::inject::InjectDefaults;
use civic_operator::webhook::admission::{Admission, Outcome};
use civic_operator::webhook::events::NoEvents;
use civic_operator::webhook::integrations::IntegrationSource;
use civic_operator::webhook::metrics::WebhookMetrics;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{BenchError, Result};

const NAMESPACE: &str = "team";
const PROFILE: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

#[derive(Debug, Clone, Serialize)]
pub struct WebhookFigures {
    pub iterations: usize,
    pub review_bytes: usize,
    pub patch_bytes: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// The thread's CPU time per call (preemption left out), microseconds.
    pub cpu_p50_us: f64,
    pub cpu_p99_us: f64,
    pub outcome: String,
}

/// The informer cache holding one ready integration; live reads return the same.
struct Cached(Arc<CivicIntegration>);

impl IntegrationSource for Cached {
    fn cached(&self, namespace: &str) -> Option<Vec<Arc<CivicIntegration>>> {
        Some(if namespace == NAMESPACE {
            vec![self.0.clone()]
        } else {
            Vec::new()
        })
    }

    fn live(
        &self,
        _namespace: &str,
    ) -> impl std::future::Future<Output = Result<Vec<CivicIntegration>, kube::Error>> + Send {
        let one = (*self.0).clone();
        async move { Ok(vec![one]) }
    }
}

fn integration() -> Result<CivicIntegration> {
    serde_json::from_value(json!({
        "apiVersion": "mcp.civic.com/v1alpha1",
        "kind": "CivicIntegration",
        "metadata": {"name": "civic", "namespace": NAMESPACE, "generation": 2},
        "spec": {
            "clientId": "client-123",
            "clientSecretRef": {"name": "civic-credentials", "key": "client-secret"},
            "bindings": [{
                "name": "support",
                "podSelector": {"matchLabels": {"app": "support-agent"}},
                "profileId": PROFILE,
                "subject": {"serviceAccountToken": {"audience": "civic", "expirationSeconds": 3600}},
            }],
        },
        "status": {"observedGeneration": 2, "conditions": [{
            "type": "Ready", "status": "True", "reason": "Ready", "message": "ready",
            "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]},
    }))
    .map_err(|e| BenchError::Setup(format!("integration JSON: {e}")))
}

/// A pod as a Deployment's ReplicaSet creates it: one app container with env, resources,
/// probes and the service-account volume.
pub fn typical_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "support-agent-7d9f8c6b5-",
            "namespace": NAMESPACE,
            "labels": {"app": "support-agent", "pod-template-hash": "7d9f8c6b5",
                       "mcp.civic.com/inject": "enabled"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-27T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "support-agent-7d9f8c6b5", "uid": "6f1c1f1e-0b7a-4b8e-9a43-3c4c2d8f0a11",
                                 "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "serviceAccountName": "support-agent",
            "containers": [{
                "name": "agent",
                "image": "registry.example.com/support-agent:1.4.2",
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [
                    {"name": "LOG_LEVEL", "value": "info"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "api-key"}}},
                ],
                "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                              "limits": {"memory": "512Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }],
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
        },
    })
}

fn review_body() -> Result<Vec<u8>> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "0a1b2c3d", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": typical_pod(), "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }))
    .map_err(|e| BenchError::Setup(format!("review JSON: {e}")))
}

/// CPU time of the calling thread, nanoseconds.
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Times `iterations` reviews (after a tenth as many for warm-up) on a current-thread runtime.
pub fn run(iterations: usize) -> Result<WebhookFigures> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("webhook runtime", e))?;
    let admission = Admission::new(
        Cached(Arc::new(integration()?)),
        InjectDefaults::default(),
        Arc::new(NoEvents),
        WebhookMetrics::unregistered(),
        Duration::from_millis(200),
    );
    let body = review_body()?;
    let timeout = Some(Duration::from_secs(10));
    let first = rt.block_on(admission.review(&body, timeout));
    if first.status != 200 || first.outcome != Outcome::Injected {
        return Err(BenchError::Check(format!(
            "the typical pod was not injected: {} {:?} {}",
            first.status,
            first.outcome,
            String::from_utf8_lossy(&first.body)
        )));
    }
    let new_hist = || {
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)
            .map_err(|e| BenchError::Check(format!("histogram: {e}")))
    };
    let mut hist = new_hist()?;
    let mut cpu_hist = new_hist()?;
    rt.block_on(async {
        for _ in 0..iterations / 10 {
            std::hint::black_box(admission.review(&body, timeout).await);
        }
        for _ in 0..iterations {
            let cpu = thread_cpu_ns();
            let t = Instant::now();
            let reply = admission.review(&body, timeout).await;
            let elapsed = t.elapsed();
            let cpu = thread_cpu_ns().saturating_sub(cpu);
            std::hint::black_box(&reply);
            hist.saturating_record(elapsed.as_nanos() as u64);
            cpu_hist.saturating_record(cpu);
        }
    });
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    Ok(WebhookFigures {
        iterations,
        review_bytes: body.len(),
        patch_bytes: first.body.len(),
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        max_us: hist.max() as f64 / 1e3,
        cpu_p50_us: cpu_hist.value_at_quantile(0.5) as f64 / 1e3,
        cpu_p99_us: cpu_hist.value_at_quantile(0.99) as f64 / 1e3,
        outcome: first.outcome.as_str().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typical_pod_is_injected() {
        // Few iterations: this checks the scenario's inputs, not the timing.
        let f = run(10).unwrap();
        assert_eq!(f.outcome, "injected");
        assert!(f.patch_bytes > 100, "{f:?}");
        // The thread's CPU time cannot exceed the wall-clock time it was measured in.
        assert!(f.cpu_p50_us > 0.0 && f.cpu_p50_us <= f.max_us, "{f:?}");
    }
}
