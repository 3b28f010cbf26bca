//! Admission handler benchmark (`cargo bench -p civic-operator`): p50/p90/p99 of one
//! AdmissionReview for a typical Deployment pod, answered from the integration cache (the
//! common path: parse, select, inject, diff, encode). Target: p99 ≤ 1 ms.
//!
//! Each review is timed by the wall clock and by the thread's CPU time. On a busy machine the
//! wall-clock tail is the scheduler (a preempted sample waits out another process's time
//! slice, ~4 ms), not the handler; the CPU-time p99 is the handler's own cost. Exits non-zero
//! when the CPU-time p99 misses the target, or the wall-clock p99 does while this process was
//! rarely preempted (fewer involuntary context switches than 0.5 % of the samples).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use civic_operator::crd::CivicIntegration;
use civic_operator::inject::InjectDefaults;
use civic_operator::webhook::admission::{Admission, Outcome};
use civic_operator::webhook::events::NoEvents;
use civic_operator::webhook::integrations::IntegrationSource;
use civic_operator::webhook::metrics::WebhookMetrics;
use serde_json::json;

const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;
const TARGET_P99: Duration = Duration::from_millis(1);

/// A synced cache holding the namespace's integrations.
struct Cached(Vec<Arc<CivicIntegration>>);

impl IntegrationSource for Cached {
    fn cached(&self, _namespace: &str) -> Option<Vec<Arc<CivicIntegration>>> {
        Some(self.0.clone())
    }

    async fn live(&self, _namespace: &str) -> Result<Vec<CivicIntegration>, kube::Error> {
        unreachable!("a cached match never reads live")
    }
}

fn integrations() -> Vec<Arc<CivicIntegration>> {
    // Two integrations with three bindings each; the pod matches the second one's last binding.
    ["billing", "civic"]
        .iter()
        .map(|name| {
            let bindings: Vec<_> = ["reports", "batch", "support-agent"]
                .iter()
                .map(|app| {
                    json!({
                        "name": app,
                        "podSelector": {"matchLabels": {"app": format!("{name}-{app}")}},
                        "profileId": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                        "subject": {"serviceAccountToken": {"audience": "civic"}},
                    })
                })
                .collect();
            let ci = json!({
                "apiVersion": "mcp.civic.com/v1alpha1", "kind": "CivicIntegration",
                "metadata": {"name": name, "namespace": "team", "generation": 3},
                "spec": {
                    "clientId": "client-123",
                    "clientSecretRef": {"name": "civic-credentials", "key": "client-secret"},
                    "bindings": bindings,
                },
                "status": {"observedGeneration": 3, "conditions": [{
                    "type": "Ready", "status": "True", "reason": "Ready", "message": "ok",
                    "observedGeneration": 3, "lastTransitionTime": "2026-01-01T00:00:00Z",
                }]},
            });
            Arc::new(serde_json::from_value(ci).expect("a CivicIntegration"))
        })
        .collect()
}

/// What the ReplicaSet controller sends for a Deployment's pod: two containers, probes,
/// resources, env, a mounted ConfigMap, the service-account token volume, tolerations.
fn review() -> Vec<u8> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "support-agent-7d9f8b6c5d-",
            "namespace": "team",
            "labels": {"app": "civic-support-agent", "pod-template-hash": "7d9f8b6c5d",
                       "mcp.civic.com/inject": "enabled"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "support-agent-7d9f8b6c5d", "uid": "0d1c3b6e-1d5b-4c55-9d3e-7a1e0f5b2c11",
                "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "serviceAccountName": "support-agent",
            "containers": [
                {"name": "agent", "image": "example.com/support-agent:2.1.0",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                           {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                 "env": [{"name": "LOG_LEVEL", "value": "info"},
                         {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "DB_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}],
                 "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                               "limits": {"memory": "512Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
                 "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}, "periodSeconds": 10},
                 "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/agent"},
                    {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                 "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"},
                {"name": "log-shipper", "image": "example.com/log-shipper:1.4",
                 "args": ["--input", "/var/log/app", "--output", "stdout"],
                 "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                 "terminationMessagePath": "/dev/termination-log",
                 "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"},
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "support-agent", "defaultMode": 420}},
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}},
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "securityContext": {"runAsNonRoot": true},
            "schedulerName": "default-scheduler", "enableServiceLinks": true,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0,
        },
    });
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "3c5e1a2b-9f4d-4e6a-8b7c-1d2e3f4a5b6c",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "c1f7", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }))
    .expect("JSON")
}

/// Median time of `f` over `n` runs.
fn median_of(n: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2]
}

/// Where the time goes, stage by stage (medians).
fn breakdown(body: &[u8], integrations: &[Arc<CivicIntegration>]) {
    use civic_operator::inject::{self, select};
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::admission::AdmissionReview;
    const N: usize = 2_000;
    let review: AdmissionReview<Pod> = serde_json::from_slice(body).expect("review");
    let pod = review
        .request
        .as_ref()
        .and_then(|r| r.object.clone())
        .expect("pod");
    let defaults = InjectDefaults::default();
    let choose = || {
        let s = select::select(
            pod.metadata.labels.as_ref().expect("labels"),
            pod.metadata.annotations.as_ref().expect("annotations"),
            Some("team"),
            integrations.iter().map(|i| &**i),
        )
        .expect("selects")
        .expect("a binding");
        select::usable(s.integration, true, &defaults.policy).expect("usable");
        s
    };
    let selected = choose();
    let injected =
        inject::inject(&pod, selected.integration, selected.binding, &defaults).expect("injected");
    let patch = inject::patch(&pod, &injected).expect("patch");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let parse = median_of(N, || {
        black_box(serde_json::from_slice::<AdmissionReview<Pod>>(black_box(body)).expect("r"));
    });
    let select_t = median_of(N, || {
        black_box(choose());
    });
    let inject_t = median_of(N, || {
        black_box(
            inject::inject(&pod, selected.integration, selected.binding, &defaults).expect("i"),
        );
    });
    let diff = median_of(N, || {
        black_box(inject::patch(&pod, &injected).expect("p"));
    });
    let encode = median_of(N, || {
        black_box(serde_json::to_vec(&patch).expect("e"));
    });
    println!(
        "stages (median): parse {:.1} µs, select+validate {:.1} µs, inject {:.1} µs, diff {:.1} µs, encode patch {:.1} µs ({} operations)",
        us(parse),
        us(select_t),
        us(inject_t),
        us(diff),
        us(encode),
        patch.0.len()
    );
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Involuntary context switches of this process so far (`/proc/self/status`), if readable.
fn involuntary_switches() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"admission".contains(a.as_str()))
    {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let admission = Admission::new(
        Cached(integrations()),
        InjectDefaults::default(),
        Arc::new(NoEvents),
        WebhookMetrics::unregistered(),
        Duration::from_secs(2),
    );
    let body = review();
    breakdown(&body, &integrations());
    let (samples, cpu, preempted) = runtime.block_on(async {
        let first = admission.review(&body, None).await;
        assert_eq!(
            first.outcome,
            Outcome::Injected,
            "the typical pod is injected"
        );
        let response_bytes = first.body.len();
        for _ in 0..WARMUP {
            black_box(admission.review(black_box(&body), None).await);
        }
        let mut samples = Vec::with_capacity(SAMPLES);
        let mut cpu = Vec::with_capacity(SAMPLES);
        let switches_before = involuntary_switches();
        for _ in 0..SAMPLES {
            let (start, cpu_start) = (Instant::now(), thread_cpu());
            let reply = admission.review(black_box(&body), None).await;
            samples.push(start.elapsed());
            cpu.push(thread_cpu().saturating_sub(cpu_start));
            black_box(reply);
        }
        let preempted = switches_before
            .zip(involuntary_switches())
            .map(|(a, b)| b.saturating_sub(a));
        println!(
            "admission: request {} bytes, response {} bytes",
            body.len(),
            response_bytes
        );
        (samples, cpu, preempted)
    });
    let mut sorted = samples;
    sorted.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (p50, p90, p99) = (
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.90),
        percentile(&sorted, 0.99),
    );
    println!(
        "admission handler, typical pod, {SAMPLES} reviews: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs (target p99 ≤ {} µs)",
        us(p50),
        us(p90),
        us(p99),
        us(*sorted.last().expect("samples")),
        TARGET_P99.as_micros()
    );
    let mut cpu = cpu;
    cpu.sort();
    let cpu_p99 = percentile(&cpu, 0.99);
    println!(
        "admission handler CPU time: p50 {:.1} µs, p99 {:.1} µs; involuntary context switches while timing: {}",
        us(percentile(&cpu, 0.50)),
        us(cpu_p99),
        preempted.map_or("unknown".to_owned(), |n| n.to_string())
    );
    if cpu_p99 > TARGET_P99 {
        eprintln!(
            "admission handler CPU-time p99 {:.1} µs is over the target",
            us(cpu_p99)
        );
        std::process::exit(1);
    }
    let rarely_preempted = preempted.is_some_and(|n| n * 200 < SAMPLES as u64);
    if p99 > TARGET_P99 {
        if rarely_preempted {
            eprintln!("admission handler p99 {:.1} µs is over the target", us(p99));
            std::process::exit(1);
        }
        println!(
            "wall-clock p99 over the target while the machine preempted this process: the tail is \
             the scheduler's; the handler's own p99 is the CPU-time figure"
        );
    }
}
