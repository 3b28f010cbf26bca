//! Reconcile against a scripted Kubernetes API (tower-test): the API error paths and the
//! no-write guarantee, without an apiserver.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use civic_sidecar::exchange::ExchangeError;
use futures_util::future::BoxFuture;
use http::Method;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::conditions::reason;
use crate::crd::ProfileBinding;
use crate::probe::ProbeError;
use crate::testing::{ApiMock, json_response, status_response};

const SECRET_PATH: &str = "/api/v1/namespaces/team/secrets/civic-credentials";
const STATUS_PATH: &str =
    "/apis/mcp.civic.com/v1alpha1/namespaces/team/civicintegrations/civic/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/team/events";

/// A probe answering from a script, counting calls.
#[derive(Default)]
struct ScriptedProbe {
    answers: Mutex<VecDeque<Result<CredentialVerdict, ExchangeError>>>,
    calls: AtomicUsize,
}

impl ScriptedProbe {
    fn with(answers: Vec<Result<CredentialVerdict, ExchangeError>>) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers.into()),
            calls: AtomicUsize::new(0),
        })
    }
}

impl CredentialProbe for ScriptedProbe {
    fn probe<'a>(
        &'a self,
        _token_url: &'a Url,
        credentials: &'a ClientCredentials,
    ) -> BoxFuture<'a, Result<CredentialVerdict, ProbeError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        assert_eq!(credentials.client_id, "client-123");
        assert_eq!(credentials.client_secret.expose(), "s3cret");
        let next = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .expect("an unscripted probe");
        Box::pin(async move { next.map_err(ProbeError) })
    }
}

fn integration(token_url: &str, status: Option<CivicIntegrationStatus>) -> Arc<CivicIntegration> {
    let mut ci = CivicIntegration::new(
        "civic",
        CivicIntegrationSpec {
            client_id: "client-123".into(),
            client_secret_ref: SecretKeyRef {
                name: "civic-credentials".into(),
                key: "client-secret".into(),
            },
            hub_url: "https://app.civic.com/hub/mcp".into(),
            token_url: token_url.into(),
            bindings: vec![ProfileBinding {
                pod_selector: Default::default(),
                ..crate::testing::binding("support", "")
            }],
            sidecar: None,
        },
    );
    ci.metadata.namespace = Some("team".into());
    ci.metadata.uid = Some("uid-civic".into());
    ci.metadata.generation = Some(2);
    ci.status = status;
    Arc::new(ci)
}

const GOOD_URL: &str = "https://auth.example/oauth/token";

/// The defaults, with `auth.example` allowed and the namespaced Secret mode (no recheck, so a
/// healthy integration requeues at the resync).
fn settings() -> Settings {
    use crate::policy::{HostRule, PolicyArgs};
    let args = PolicyArgs {
        allowed_token_hosts: vec![HostRule::parse("auth.example").unwrap()],
        allowed_hub_hosts: vec![HostRule::parse("app.civic.com").unwrap()],
        allowed_sidecar_images: vec![],
        refused_audiences: vec![],
    };
    Settings {
        secrets: SecretAccess::Namespaces(["team".to_owned()].into()),
        policy: Policy::new(&args, crate::inject::DEFAULT_SIDECAR_IMAGE),
        ..Settings::default()
    }
}

fn secret_json(rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "civic-credentials", "namespace": "team", "uid": "uid-secret",
                     "resourceVersion": rv},
        // "s3cret\n": the trailing line break is not part of the secret
        "data": {"client-secret": "czNjcmV0Cg=="}
    })
}

struct Fixture {
    ctx: Arc<Context>,
    probe: Arc<ScriptedProbe>,
    metrics: Metrics,
    pods: crate::pods::PodIndexWriter,
}

fn fixture(mock_client: Client, probe: Arc<ScriptedProbe>, leading: bool) -> Fixture {
    let (pods, mut writer) = crate::pods::index();
    writer.apply(watcher::Event::InitDone);
    let metrics = Metrics::new();
    let shared = Shared {
        client: mock_client,
        probe: probe.clone(),
        probes: Arc::new(ProbeCache::new(
            Duration::from_secs(600),
            Duration::from_secs(5),
        )),
        metrics: metrics.clone(),
        settings: settings(),
        identity: "op-test".into(),
    };
    Fixture {
        ctx: Arc::new(Context::new(shared, pods, LeaderGate::fixed(leading))),
        probe,
        metrics,
        pods: writer,
    }
}

/// `(type, status, reason)` of each condition in a status-patch body.
fn conditions_of(body: &Value) -> Vec<(String, String, String)> {
    body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
                c["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn row(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

fn patched(obj: &CivicIntegration, body: &Value) -> Value {
    let mut v = serde_json::to_value(obj).unwrap();
    v["status"] = body["status"].clone();
    v
}

/// Answers the status patch (checking it is a forced apply by our field manager) and returns
/// its body.
async fn expect_status_apply(mock: &mut ApiMock, obj: &CivicIntegration) -> Value {
    let (req, send) = mock.next().await;
    assert_eq!(req.method(), Method::PATCH);
    assert_eq!(req.uri().path(), STATUS_PATH);
    let query = req.uri().query().unwrap_or_default().to_owned();
    assert!(query.contains("fieldManager=civic-operator"), "{query}");
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(
        req.headers()["content-type"],
        "application/apply-patch+yaml"
    );
    let body: Value =
        serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
    send.send_response(json_response(200, patched(obj, &body)));
    body
}

/// Answers `n` Event creations; returns their `(type, reason)`.
async fn expect_events(mock: &mut ApiMock, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let body = mock
            .expect(Method::POST, EVENTS_PATH, json_response(201, json!({})))
            .await;
        assert_eq!(body["regarding"]["name"], "civic");
        assert_eq!(body["reportingController"], REPORTING_CONTROLLER);
        assert_eq!(body["reportingInstance"], "op-test");
        out.push((
            body["type"].as_str().unwrap().to_owned(),
            body["reason"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

fn status_from(body: &Value) -> CivicIntegrationStatus {
    serde_json::from_value(body["status"].clone()).unwrap()
}

#[tokio::test]
async fn missing_secret_is_reported_and_announced() {
    let (client, mut mock) = ApiMock::new();
    let mut f = fixture(client, ScriptedProbe::with(vec![]), true);
    // Opted in and selected by the binding, but created without its sidecar.
    f.pods.apply(watcher::Event::Apply(crate::testing::pod_meta(
        "team", "agent", "agent", true, None,
    )));
    let obj = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(obj.clone(), f.ctx.clone()));

    mock.expect(Method::GET, SECRET_PATH, status_response(404))
        .await;
    let body = expect_status_apply(&mut mock, &obj).await;
    assert_eq!(
        conditions_of(&body),
        [
            row("Ready", "False", reason::SECRET_NOT_FOUND),
            row("SecretResolved", "False", reason::SECRET_NOT_FOUND),
            row("CredentialsValid", "Unknown", reason::NOT_CHECKED),
        ]
    );
    assert_eq!(body["status"]["observedGeneration"], 2);
    assert_eq!(body["kind"], "CivicIntegration");
    assert_eq!(body["apiVersion"], "mcp.civic.com/v1alpha1");
    assert_eq!(
        expect_events(&mut mock, 3).await,
        [
            ("Warning".to_string(), reason::SECRET_NOT_FOUND.to_string()),
            ("Warning".to_string(), reason::SECRET_NOT_FOUND.to_string()),
            ("Warning".to_string(), reason::NOT_CHECKED.to_string()),
        ]
    );
    let action = run.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(settings().resync));
    assert_eq!(f.probe.calls.load(Ordering::SeqCst), 0);
    assert_eq!(f.metrics.status_writes.get(), 1);
    let text = f.metrics.render();
    let series = "{integration=\"civic\",integration_namespace=\"team\"}";
    assert!(
        text.contains(&format!("civic_operator_integration_ready{series} 0")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "civic_operator_opted_in_pods_without_sidecar{series} 1"
        )),
        "{text}"
    );
    f.ctx.forget(&obj);
    assert!(!f.metrics.render().contains("integration_namespace"));
}

#[tokio::test]
async fn a_noop_reconcile_makes_no_write() {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(client, ScriptedProbe::with(vec![]), true);
    let first = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(first.clone(), f.ctx.clone()));
    mock.expect(Method::GET, SECRET_PATH, status_response(404))
        .await;
    let body = expect_status_apply(&mut mock, &first).await;
    expect_events(&mut mock, 3).await;
    run.await.unwrap().unwrap();

    // The watch delivers our own write; reconciling it again must only read.
    let stored = integration(GOOD_URL, Some(status_from(&body)));
    for _ in 0..2 {
        let run = tokio::spawn(reconcile(stored.clone(), f.ctx.clone()));
        mock.expect(Method::GET, SECRET_PATH, status_response(404))
            .await;
        run.await.unwrap().unwrap();
        mock.expect_silence(Duration::from_millis(200)).await;
    }
    assert_eq!(f.metrics.status_writes.get(), 1);

    // Even from a stale cache (still without status), what we wrote is not written again.
    let run = tokio::spawn(reconcile(first, f.ctx.clone()));
    mock.expect(Method::GET, SECRET_PATH, status_response(404))
        .await;
    run.await.unwrap().unwrap();
    mock.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(f.metrics.status_writes.get(), 1);
}

#[tokio::test]
async fn good_credentials_make_it_ready_and_the_verdict_is_reused() {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(
        client,
        ScriptedProbe::with(vec![Ok(CredentialVerdict::Valid)]),
        true,
    );
    let obj = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(obj.clone(), f.ctx.clone()));
    mock.expect(
        Method::GET,
        SECRET_PATH,
        json_response(200, secret_json("10")),
    )
    .await;
    let body = expect_status_apply(&mut mock, &obj).await;
    assert_eq!(
        conditions_of(&body),
        [
            row("Ready", "True", reason::READY),
            row("SecretResolved", "True", reason::SECRET_FOUND),
            row("CredentialsValid", "True", reason::CREDENTIALS_ACCEPTED),
        ]
    );
    assert_eq!(
        body["status"]["bindings"],
        json!([{
            "name": "support", "matchedPods": 0, "injectedPods": 0, "audience": "civic",
            "subject": "system:serviceaccount:team:<service account of the pod>",
        }])
    );
    let events = expect_events(&mut mock, 3).await;
    assert!(events.iter().all(|(t, _)| t == "Normal"), "{events:?}");
    run.await.unwrap().unwrap();

    // Unchanged Secret: the fresh verdict is reused, no second probe.
    let stored = integration(GOOD_URL, Some(status_from(&body)));
    let run = tokio::spawn(reconcile(stored, f.ctx.clone()));
    mock.expect(
        Method::GET,
        SECRET_PATH,
        json_response(200, secret_json("10")),
    )
    .await;
    run.await.unwrap().unwrap();
    mock.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(f.probe.calls.load(Ordering::SeqCst), 1);
    let text = f.metrics.render();
    assert!(text.contains("civic_operator_probes_total{result=\"valid\"} 1"));
    assert!(
        text.contains("civic_operator_integration_ready{integration=\"civic\",integration_namespace=\"team\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn invalid_client_is_a_false_verdict() {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(
        client,
        ScriptedProbe::with(vec![Ok(CredentialVerdict::Invalid {
            code: "invalid_client".into(),
            description: Some("Client authentication failed".into()),
        })]),
        true,
    );
    let obj = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(obj.clone(), f.ctx.clone()));
    mock.expect(
        Method::GET,
        SECRET_PATH,
        json_response(200, secret_json("10")),
    )
    .await;
    let body = expect_status_apply(&mut mock, &obj).await;
    assert_eq!(
        conditions_of(&body)[2],
        row("CredentialsValid", "False", reason::INVALID_CLIENT)
    );
    assert_eq!(conditions_of(&body)[0].2, reason::INVALID_CLIENT);
    let msg = body["status"]["conditions"][2]["message"].as_str().unwrap();
    assert!(msg.contains("Client authentication failed"), "{msg}");
    assert!(!body.to_string().contains("s3cret"));
    expect_events(&mut mock, 3).await;
    // A verdict, not an error: wait for the verdict to go stale (or a change).
    assert_eq!(
        run.await.unwrap().unwrap(),
        Action::requeue(settings().resync)
    );
}

#[tokio::test]
async fn a_probe_network_error_is_transient_not_a_verdict() {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(
        client,
        ScriptedProbe::with(vec![Err(ExchangeError::Network(
            "connection refused".into(),
        ))]),
        true,
    );
    let obj = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(obj.clone(), f.ctx.clone()));
    mock.expect(
        Method::GET,
        SECRET_PATH,
        json_response(200, secret_json("10")),
    )
    .await;
    let body = expect_status_apply(&mut mock, &obj).await;
    assert_eq!(
        conditions_of(&body)[2],
        row("CredentialsValid", "Unknown", reason::PROBE_FAILED)
    );
    expect_events(&mut mock, 3).await;
    let err = run.await.unwrap().unwrap_err();
    assert_eq!(err.category(), "probe");
    let action = error_policy(obj, &err, f.ctx.clone());
    assert_ne!(action, Action::await_change());
    assert!(
        f.metrics
            .render()
            .contains("civic_operator_probes_total{result=\"error\"} 1")
    );
}

#[tokio::test]
async fn a_secret_read_5xx_is_transient_and_writes_nothing() {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(client, ScriptedProbe::with(vec![]), true);
    let obj = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(obj.clone(), f.ctx.clone()));
    mock.expect(Method::GET, SECRET_PATH, status_response(503))
        .await;
    let err = run.await.unwrap().unwrap_err();
    assert_eq!(err.category(), "api_server_error");
    mock.expect_silence(Duration::from_millis(100)).await;
    assert!(
        f.metrics
            .render()
            .contains("civic_operator_reconcile_errors_total{category=\"api_server_error\"} 1")
    );
}

#[tokio::test]
async fn a_status_conflict_is_transient_and_announces_nothing() {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(client, ScriptedProbe::with(vec![]), true);
    let obj = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(obj.clone(), f.ctx.clone()));
    mock.expect(Method::GET, SECRET_PATH, status_response(404))
        .await;
    mock.expect(Method::PATCH, STATUS_PATH, status_response(409))
        .await;
    let err = run.await.unwrap().unwrap_err();
    assert_eq!(err.category(), "api_conflict");
    mock.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(f.metrics.status_writes.get(), 0);

    // Each consecutive failure lengthens the backoff (see `backoff_doubles_and_caps`).
    for n in 1..=3 {
        assert_ne!(
            error_policy(obj.clone(), &err, f.ctx.clone()),
            Action::await_change()
        );
        assert_eq!(f.ctx.failures.lock().unwrap()["team/civic"], n);
    }
}

#[tokio::test]
async fn a_status_404_means_deleted_meanwhile() {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(client, ScriptedProbe::with(vec![]), true);
    let obj = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(obj, f.ctx.clone()));
    mock.expect(Method::GET, SECRET_PATH, status_response(404))
        .await;
    mock.expect(Method::PATCH, STATUS_PATH, status_response(404))
        .await;
    assert_eq!(run.await.unwrap().unwrap(), Action::await_change());
    mock.expect_silence(Duration::from_millis(100)).await;
}

/// Reconciles an integration with `token_url`, which must be an invalid spec: one status write
/// (`Ready=False, InvalidSpec`), no Secret read, no probe, and a wait for the next change.
/// Returns the condition's message.
async fn reconcile_invalid(token_url: &str) -> String {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(client, ScriptedProbe::with(vec![]), true);
    let obj = integration(token_url, None);
    let run = tokio::spawn(reconcile(obj.clone(), f.ctx.clone()));
    let body = expect_status_apply(&mut mock, &obj).await;
    assert_eq!(
        conditions_of(&body)[0],
        row("Ready", "False", reason::INVALID_SPEC)
    );
    expect_events(&mut mock, 3).await;
    assert_eq!(run.await.unwrap().unwrap(), Action::await_change());
    assert_eq!(f.probe.calls.load(Ordering::SeqCst), 0);
    body["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn an_invalid_spec_skips_the_secret_and_waits_for_a_change() {
    // The schema forbids this too; validation must catch it regardless.
    let msg = reconcile_invalid("http://auth.example/oauth/token").await;
    assert!(msg.starts_with("spec.tokenUrl: must use https"), "{msg}");
}

/// A token URL outside the operator's policy is an invalid spec: its Secret is not read and the
/// credential probe never contacts the host.
#[tokio::test]
async fn a_token_host_outside_the_policy_is_never_probed() {
    let msg = reconcile_invalid("https://collector.example/oauth/token").await;
    assert!(
        msg.contains("spec.tokenUrl: token host \"collector.example\" is not allowed")
            && msg.contains("policy.allowedTokenHosts: auth.example"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_replica_without_the_lease_never_writes() {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(client, ScriptedProbe::with(vec![]), false);
    let obj = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(obj.clone(), f.ctx.clone()));
    mock.expect(Method::GET, SECRET_PATH, status_response(404))
        .await;
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::NotLeader));
    assert_eq!(
        error_policy(obj, &err, f.ctx.clone()),
        Action::await_change()
    );
    mock.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_failed_event_does_not_fail_the_reconcile() {
    let (client, mut mock) = ApiMock::new();
    let f = fixture(client, ScriptedProbe::with(vec![]), true);
    let obj = integration(GOOD_URL, None);
    let run = tokio::spawn(reconcile(obj.clone(), f.ctx.clone()));
    mock.expect(Method::GET, SECRET_PATH, status_response(404))
        .await;
    expect_status_apply(&mut mock, &obj).await;
    for _ in 0..3 {
        mock.expect(Method::POST, EVENTS_PATH, status_response(500))
            .await;
    }
    assert!(run.await.unwrap().is_ok());
}
