//! Test support: a kube `Client` backed by a tower-test mock, answering scripted responses, and
//! pods as the pod index sees them.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use crate::annotations::{INJECT_ENABLED, INJECT_LABEL, INJECTED_ANNOTATION};

/// The server side of a mocked Kubernetes API.
pub struct ApiMock {
    handle: Handle<Request<Body>, Response<Body>>,
}

impl ApiMock {
    /// A client whose every request is answered through the returned mock.
    pub fn new() -> (kube::Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), Self { handle })
    }

    /// Waits for the next request, checks its method and path, answers it with `response` and
    /// returns the request body as JSON (`Null` when empty).
    pub async fn expect(&mut self, method: Method, path: &str, response: Response<Body>) -> Value {
        let (req, send) = self.next().await;
        assert_eq!(
            (req.method(), req.uri().path()),
            (&method, path),
            "unexpected request {} {}",
            req.method(),
            req.uri()
        );
        let body = req.into_body().collect_bytes().await.expect("request body");
        send.send_response(response);
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    }

    /// The next request, unanswered.
    pub async fn next(&mut self) -> (Request<Body>, mock::SendResponse<Response<Body>>) {
        tokio::time::timeout(Duration::from_secs(10), self.handle.next_request())
            .await
            .expect("a request within 10 s")
            .expect("the client is alive")
    }

    /// Asserts that no request arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some((req, _))) = tokio::time::timeout(wait, self.handle.next_request()).await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// A JSON response with this status.
pub fn json_response(code: u16, value: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&value).expect("JSON")))
        .expect("valid response")
}

/// A Kubernetes `Status` failure with this code.
pub fn status_response(code: u16) -> Response<Body> {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    };
    json_response(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("scripted {code}"), "reason": reason, "code": code}),
    )
}

/// The one `ProfileBinding` of the unit tests: pods labelled `app: <app>`, the test profile,
/// locked, a service-account subject with audience `civic`.
pub fn binding(name: &str, app: &str) -> crate::crd::ProfileBinding {
    use crate::crd::{ProfileBinding, ServiceAccountTokenSubject, SubjectSource};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    ProfileBinding {
        name: name.into(),
        pod_selector: LabelSelector {
            match_labels: Some([("app".to_string(), app.to_string())].into()),
            match_expressions: None,
        },
        profile_id: PROFILE_ID.into(),
        profiles: Vec::new(),
        lock_profile: true,
        subject: SubjectSource::ServiceAccountToken(ServiceAccountTokenSubject {
            audience: "civic".into(),
            expiration_seconds: 3600,
        }),
        subject_token_type: None,
        token_ttl_seconds: None,
        scope: None,
    }
}

/// The profile UUID of [`binding`].
pub const PROFILE_ID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

/// A policy that also allows the loopback hosts test fakes listen on.
pub fn loopback_policy() -> crate::policy::Policy {
    use crate::policy::{DEFAULT_REFUSED_AUDIENCES, HostRule, Policy, PolicyArgs};
    let hosts: Vec<HostRule> = [
        "auth.civic.com",
        "app.civic.com",
        "127.0.0.1",
        "[::1]",
        "localhost",
    ]
    .iter()
    .map(|h| HostRule::parse(h).expect("a host"))
    .collect();
    Policy::new(
        &PolicyArgs {
            allowed_token_hosts: hosts.clone(),
            allowed_hub_hosts: hosts,
            allowed_sidecar_images: vec![],
            refused_audiences: DEFAULT_REFUSED_AUDIENCES
                .iter()
                .map(|a| a.to_string())
                .collect(),
        },
        crate::inject::DEFAULT_SIDECAR_IMAGE,
    )
}

/// A pod as the pod index sees it: labels `app` and (opted in) the inject label, and the
/// injected-binding annotation.
pub fn pod_meta(
    ns: &str,
    name: &str,
    app: &str,
    opted_in: bool,
    injected: Option<&str>,
) -> PartialObjectMeta<Pod> {
    let mut labels = BTreeMap::from([("app".to_string(), app.to_string())]);
    if opted_in {
        labels.insert(INJECT_LABEL.into(), INJECT_ENABLED.into());
    }
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        labels: Some(labels),
        annotations: injected
            .map(|v| BTreeMap::from([(INJECTED_ANNOTATION.to_string(), v.to_string())])),
        ..ObjectMeta::default()
    }
    .into_response_partial()
}
