use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use k8s_openapi::api::core::v1::ObjectReference;
use serde_json::{Value, json};

use super::*;
use crate::annotations::{INJECT_ENABLED, INJECT_LABEL};
use crate::webhook::integrations::IntegrationSource;

const PROFILE: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

fn integration(name: &str, app: &str, ready: Option<&str>) -> CivicIntegration {
    let mut v = json!({
        "apiVersion": "mcp.civic.com/v1alpha1",
        "kind": "CivicIntegration",
        "metadata": {"name": name, "namespace": "team", "generation": 2},
        "spec": {
            "clientId": "client-123",
            "clientSecretRef": {"name": "civic-credentials", "key": "client-secret"},
            "bindings": [{
                "name": "support",
                "podSelector": {"matchLabels": {"app": app}},
                "profileId": PROFILE,
                "subject": {"serviceAccountToken": {"audience": "civic"}},
            }],
        },
    });
    if let Some(status) = ready {
        v["status"] = json!({"conditions": [{
            "type": "Ready", "status": status, "reason": "SecretNotFound",
            "message": "Secret \"civic-credentials\" not found", "observedGeneration": 2,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]});
    }
    serde_json::from_value(v).unwrap()
}

/// Scripted cache and live reads.
#[derive(Default)]
struct Fake {
    cached: Option<Vec<CivicIntegration>>,
    live: Vec<CivicIntegration>,
    live_delay: Option<Duration>,
    live_calls: AtomicUsize,
}

impl IntegrationSource for Fake {
    fn cached(&self, namespace: &str) -> Option<Vec<Arc<CivicIntegration>>> {
        self.cached.as_ref().map(|l| {
            l.iter()
                .filter(|i| i.metadata.namespace.as_deref() == Some(namespace))
                .cloned()
                .map(Arc::new)
                .collect()
        })
    }

    fn live(
        &self,
        _namespace: &str,
    ) -> impl std::future::Future<Output = Result<Vec<CivicIntegration>, kube::Error>> + Send {
        self.live_calls.fetch_add(1, Ordering::SeqCst);
        let (list, delay) = (self.live.clone(), self.live_delay);
        async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            Ok(list)
        }
    }
}

#[derive(Default)]
struct Recorded(Mutex<Vec<(ObjectReference, String)>>);

impl EventSink for Recorded {
    fn not_injected(&self, regarding: ObjectReference, note: String) {
        self.0.lock().unwrap().push((regarding, note));
    }
}

fn admission(fake: Fake) -> (Admission<Fake>, Arc<Recorded>) {
    let events = Arc::new(Recorded::default());
    let a = Admission::new(
        fake,
        InjectDefaults::default(),
        events.clone(),
        WebhookMetrics::unregistered(),
        Duration::from_millis(200),
    );
    (a, events)
}

fn pod(app: &str, opted_in: bool) -> Value {
    let mut labels = json!({"app": app});
    if opted_in {
        labels[INJECT_LABEL] = json!(INJECT_ENABLED);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "web-5d4f-", "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f",
                                 "uid": "rs-uid", "controller": true}],
        },
        "spec": {"containers": [{"name": "app", "image": "example/app:1",
                                 "futureField": {"kept": true}}]},
    })
}

fn review(pod: &Value) -> Vec<u8> {
    review_with(pod, "CREATE", false)
}

fn review_with(pod: &Value, operation: &str, dry_run: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team", "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "dryRun": dry_run,
        },
    }))
    .unwrap()
}

fn response(reply: &Reply) -> Value {
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    v["response"].clone()
}

/// Applies the reply's patch to `raw` the way the apiserver does.
fn patched(reply: &Reply, raw: &Value) -> Value {
    let r = response(reply);
    let mut doc = raw.clone();
    let bytes = r["patch"].as_str().map(|b64| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    });
    if let Some(bytes) = bytes {
        assert_eq!(r["patchType"], "JSONPatch");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
    }
    doc
}

#[tokio::test]
async fn a_cached_match_is_injected_without_an_api_call() {
    let (a, _) = admission(Fake {
        cached: Some(vec![integration("civic", "web", Some("True"))]),
        ..Fake::default()
    });
    let raw = pod("web", true);
    let reply = a.review(&review(&raw), None).await;
    assert_eq!((reply.status, reply.outcome), (200, Outcome::Injected));
    let r = response(&reply);
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true);
    assert!(r.get("warnings").is_none());
    let out = patched(&reply, &raw);
    assert_eq!(out["spec"]["initContainers"][0]["name"], "civic-sidecar");
    assert_eq!(
        out["spec"]["containers"][0]["env"][0]["name"],
        "CIVIC_MCP_URL"
    );
    assert_eq!(
        out["spec"]["containers"][0]["futureField"],
        json!({"kept": true}),
        "fields the operator's types do not know survive the patch"
    );
    assert_eq!(
        out["metadata"]["annotations"]["mcp.civic.com/injected"],
        "civic/support"
    );
    assert_eq!(a.source.live_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn pods_not_opted_in_and_other_operations_are_untouched() {
    let (a, _) = admission(Fake {
        cached: Some(vec![integration("civic", "web", Some("True"))]),
        ..Fake::default()
    });
    let reply = a.review(&review(&pod("web", false)), None).await;
    assert_eq!(reply.outcome, Outcome::Skipped);
    assert!(response(&reply).get("patch").is_none());
    let reply = a
        .review(&review_with(&pod("web", true), "UPDATE", false), None)
        .await;
    assert_eq!(reply.outcome, Outcome::Skipped);
}

#[tokio::test]
async fn a_cache_miss_is_confirmed_by_a_live_read() {
    // The cache lags: it has not seen the integration yet.
    let (a, events) = admission(Fake {
        cached: Some(vec![]),
        live: vec![integration("civic", "web", None)],
        ..Fake::default()
    });
    let reply = a.review(&review(&pod("web", true)), None).await;
    assert_eq!(reply.outcome, Outcome::Injected);
    assert_eq!(a.source.live_calls.load(Ordering::SeqCst), 1);
    let warnings = response(&reply)["warnings"].clone();
    assert!(
        warnings[0].as_str().unwrap().contains("no status yet"),
        "{warnings}"
    );
    assert!(events.0.lock().unwrap().is_empty());

    // Before the cache synced, the live read decides too.
    let (a, _) = admission(Fake {
        cached: None,
        live: vec![integration("civic", "web", Some("True"))],
        ..Fake::default()
    });
    assert_eq!(
        a.review(&review(&pod("web", true)), None).await.outcome,
        Outcome::Injected
    );
}

#[tokio::test]
async fn no_match_admits_with_a_warning_and_an_event_on_the_owner() {
    let (a, events) = admission(Fake {
        cached: Some(vec![integration("civic", "other", Some("True"))]),
        live: vec![integration("civic", "other", Some("True"))],
        ..Fake::default()
    });
    let raw = pod("web", true);
    let reply = a.review(&review(&raw), None).await;
    assert_eq!(reply.outcome, Outcome::NoMatch);
    let r = response(&reply);
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no CivicIntegration binding")
    );
    let recorded = events.0.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].0.kind.as_deref(), Some("ReplicaSet"));
    assert_eq!(recorded[0].0.name.as_deref(), Some("web-5d4f"));

    // A dry run has no side effects.
    let reply = a.review(&review_with(&raw, "CREATE", true), None).await;
    assert_eq!(reply.outcome, Outcome::NoMatch);
    assert_eq!(events.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn ambiguous_and_not_ready_integrations_deny_with_the_fix() {
    let both = vec![
        integration("alpha", "web", Some("True")),
        integration("beta", "web", Some("True")),
    ];
    let (a, _) = admission(Fake {
        cached: Some(both.clone()),
        live: both,
        ..Fake::default()
    });
    let reply = a.review(&review(&pod("web", true)), None).await;
    assert_eq!(reply.outcome, Outcome::Denied);
    let r = response(&reply);
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.contains("alpha/support, beta/support"), "{message}");
    assert!(message.contains("mcp.civic.com/binding"), "{message}");

    let broken = vec![integration("civic", "web", Some("False"))];
    let (a, _) = admission(Fake {
        cached: Some(broken.clone()),
        live: broken,
        ..Fake::default()
    });
    let reply = a.review(&review(&pod("web", true)), None).await;
    assert_eq!(reply.outcome, Outcome::Denied);
    let message = response(&reply)["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("is not ready (SecretNotFound"),
        "{message}"
    );
    assert_eq!(
        a.source.live_calls.load(Ordering::SeqCst),
        1,
        "confirmed live"
    );
}

#[tokio::test]
async fn a_slow_live_read_denies_within_the_deadline() {
    let (a, _) = admission(Fake {
        cached: Some(vec![]),
        live: vec![integration("civic", "web", Some("True"))],
        live_delay: Some(Duration::from_secs(5)),
        ..Fake::default()
    });
    let start = Instant::now();
    let reply = a
        .review(&review(&pod("web", true)), Some(Duration::from_millis(100)))
        .await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(reply.outcome, Outcome::Denied);
    let message = response(&reply)["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("try again"), "{message}");
}

#[tokio::test]
async fn an_injected_pod_is_not_injected_again() {
    let (a, _) = admission(Fake {
        cached: Some(vec![integration("civic", "web", Some("True"))]),
        ..Fake::default()
    });
    let raw = pod("web", true);
    let once = patched(&a.review(&review(&raw), None).await, &raw);
    let reply = a.review(&review(&once), None).await;
    assert_eq!(reply.outcome, Outcome::AlreadyInjected);
    assert!(response(&reply).get("patch").is_none());
}

#[tokio::test]
async fn preset_injection_markers_are_denied() {
    let (a, _) = admission(Fake {
        cached: Some(vec![integration("civic", "web", Some("True"))]),
        ..Fake::default()
    });
    let raw = pod("web", true);
    let once = patched(&a.review(&review(&raw), None).await, &raw);
    // The pod's author edits the sidecar the markers vouch for: denied, not skipped.
    let mut forged = once.clone();
    let sidecar = forged["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "civic-sidecar")
        .unwrap();
    sidecar["image"] = json!("example.com/not-civic:1");
    let reply = a.review(&review(&forged), None).await;
    assert_eq!(reply.outcome, Outcome::Denied);
    let message = response(&reply)["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("image, command or args"), "{message}");
    // Markers on a pod that no binding selects cannot be ours either.
    let mut elsewhere = once.clone();
    elsewhere["metadata"]["labels"]["app"] = json!("other");
    let reply = a.review(&review(&elsewhere), None).await;
    assert_eq!(reply.outcome, Outcome::Denied);
    assert!(
        response(&reply)["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no binding of its namespace selects it")
    );
}

#[tokio::test]
async fn host_network_pods_are_denied() {
    let (a, _) = admission(Fake {
        cached: Some(vec![integration("civic", "web", Some("True"))]),
        ..Fake::default()
    });
    let mut raw = pod("web", true);
    raw["spec"]["hostNetwork"] = json!(true);
    let reply = a.review(&review(&raw), None).await;
    assert_eq!(reply.outcome, Outcome::Denied);
    assert!(
        response(&reply)["status"]["message"]
            .as_str()
            .unwrap()
            .contains("hostNetwork")
    );
}

#[tokio::test]
async fn garbage_is_a_400() {
    let (a, _) = admission(Fake::default());
    let reply = a.review(b"{not json", None).await;
    assert_eq!((reply.status, reply.outcome), (400, Outcome::Invalid));
    let reply = a
        .review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            None,
        )
        .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn outcomes_are_counted() {
    let (a, _) = admission(Fake {
        cached: Some(vec![integration("civic", "web", Some("True"))]),
        ..Fake::default()
    });
    a.review(&review(&pod("web", true)), None).await;
    a.review(&review(&pod("web", false)), None).await;
    let m = &a.metrics;
    assert_eq!(m.admissions.with_label_values(&["injected"]).get(), 1);
    assert_eq!(m.admissions.with_label_values(&["skipped"]).get(), 1);
    assert_eq!(m.duration.get_sample_count(), 2);
}
