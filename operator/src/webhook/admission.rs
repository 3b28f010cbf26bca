//! One AdmissionReview (v1) in, one out: choose the binding, inject, answer with the JSON patch,
//! a warning, or a denial that says what to fix.
//!
//! The cache answers the common case (a clean match) with no API call. Anything else (no
//! match, an unknown integration named by the annotation, not ready, ambiguous) is confirmed by
//! a live read before the answer, within a deadline shorter than the webhook timeout; if the
//! live read fails, the pod is denied with a "try again" (its controller retries), never
//! silently admitted without the sidecar.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, ResourceExt};

use super::events::{self, EventSink};
use super::integrations::IntegrationSource;
use super::metrics::WebhookMetrics;
use crate::annotations;
use crate::crd::CivicIntegration;
use crate::inject::select::{self, Selected, Usable};
use crate::inject::{self, InjectDefaults};

/// How one review ended (the `outcome` label of `civic_operator_admissions_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    AlreadyInjected,
    NoMatch,
    Denied,
    /// Not a pod CREATE, or not opted in: allowed unchanged.
    Skipped,
    /// Not a readable AdmissionReview.
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::AlreadyInjected => "already_injected",
            Outcome::NoMatch => "no_match",
            Outcome::Denied => "denied",
            Outcome::Skipped => "skipped",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The HTTP answer to one review.
#[derive(Debug)]
pub struct Reply {
    /// 200 with an AdmissionReview, or 400 for a body that is none.
    pub status: u16,
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

/// The admission handler.
pub struct Admission<S> {
    source: S,
    defaults: InjectDefaults,
    events: Arc<dyn EventSink>,
    metrics: WebhookMetrics,
    /// Longest live read of CivicIntegrations.
    lookup_timeout: Duration,
}

impl<S: IntegrationSource> Admission<S> {
    pub fn new(
        source: S,
        defaults: InjectDefaults,
        events: Arc<dyn EventSink>,
        metrics: WebhookMetrics,
        lookup_timeout: Duration,
    ) -> Self {
        Self {
            source,
            defaults,
            events,
            metrics,
            lookup_timeout,
        }
    }

    pub fn defaults(&self) -> &InjectDefaults {
        &self.defaults
    }

    /// Answers the AdmissionReview in `body`. `timeout` is the apiserver's (`?timeout=`), if
    /// it sent one: live reads stop well before it.
    pub async fn review(&self, body: &[u8], timeout: Option<Duration>) -> Reply {
        let start = Instant::now();
        let reply = self.review_inner(body, timeout).await;
        self.metrics
            .admissions
            .with_label_values(&[reply.outcome.as_str()])
            .inc();
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        reply
    }

    async fn review_inner(&self, body: &[u8], timeout: Option<Duration>) -> Reply {
        let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return invalid(format!("not an AdmissionReview: {e}")),
        };
        let request: AdmissionRequest<Pod> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return invalid(e.to_string()),
        };
        let deadline = timeout.map_or(self.lookup_timeout, |t| self.lookup_timeout.min(t / 2));
        let (response, outcome) = self.decide(&request, deadline).await;
        match encode(response) {
            Ok(body) => Reply {
                status: 200,
                body,
                outcome,
            },
            Err(e) => invalid(format!("cannot encode the response: {e}")),
        }
    }

    async fn decide(
        &self,
        request: &AdmissionRequest<Pod>,
        deadline: Duration,
    ) -> (AdmissionResponse, Outcome) {
        let response = AdmissionResponse::from(request);
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        let Some(pod) = request.object.as_ref().filter(|_| is_pod) else {
            return (response, Outcome::Skipped);
        };
        if request.operation != Operation::Create || !annotations::opted_in(pod.labels()) {
            return (response, Outcome::Skipped);
        }
        // An already injected pod (a reinvocation) takes the same path: injection verifies
        // its markers instead of trusting them.
        // At admission a pod may not carry its namespace yet; the request always does.
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.namespace())
            .unwrap_or_default();

        if let Some(cached) = self.source.cached(&namespace)
            && let Ok(Some(selected)) = choose(pod, &namespace, &cached)
            && let Ok(usable) = select::usable(selected.integration, true, &self.defaults.policy)
        {
            return self.inject(response, pod, selected, usable);
        }

        let live = tokio::time::timeout(deadline, self.source.live(&namespace)).await;
        let integrations = match live {
            Ok(Ok(list)) => {
                self.metrics.live_reads.with_label_values(&["ok"]).inc();
                list
            }
            Ok(Err(e)) => {
                self.metrics.live_reads.with_label_values(&["error"]).inc();
                tracing::warn!(namespace = %namespace, error = %e, "reading CivicIntegrations failed");
                return deny(
                    response,
                    format!(
                        "could not read the CivicIntegrations of namespace {namespace:?} ({}); \
                         try again",
                        crate::error::kube_category(&e)
                    ),
                );
            }
            Err(_) => {
                self.metrics
                    .live_reads
                    .with_label_values(&["timeout"])
                    .inc();
                return deny(
                    response,
                    format!(
                        "reading the CivicIntegrations of namespace {namespace:?} took longer \
                         than {}ms; try again",
                        deadline.as_millis()
                    ),
                );
            }
        };
        let integrations: Vec<Arc<CivicIntegration>> =
            integrations.into_iter().map(Arc::new).collect();
        match choose(pod, &namespace, &integrations) {
            Err(e) => deny(response, e.to_string()),
            Ok(None) => self.no_match(response, request, pod, &namespace),
            Ok(Some(selected)) => {
                match select::usable(selected.integration, true, &self.defaults.policy) {
                    Ok(usable) => self.inject(response, pod, selected, usable),
                    Err(e) => deny(response, e.to_string()),
                }
            }
        }
    }

    fn inject(
        &self,
        mut response: AdmissionResponse,
        pod: &Pod,
        selected: Selected<'_>,
        usable: Usable,
    ) -> (AdmissionResponse, Outcome) {
        match inject::inject(pod, selected.integration, selected.binding, &self.defaults) {
            Ok(injected) => {
                if let Usable::Unverified { warning } = usable {
                    response.warnings = Some(vec![warning]);
                }
                let outcome = if inject::is_injected(pod) {
                    Outcome::AlreadyInjected
                } else {
                    Outcome::Injected
                };
                with_patch(response, pod, &injected, outcome)
            }
            Err(e) => deny(response, e.to_string()),
        }
    }

    fn no_match(
        &self,
        mut response: AdmissionResponse,
        request: &AdmissionRequest<Pod>,
        pod: &Pod,
        namespace: &str,
    ) -> (AdmissionResponse, Outcome) {
        if inject::is_injected(pod) {
            return deny(
                response,
                inject::InjectError::MarkersWithoutBinding.to_string(),
            );
        }
        let note = format!(
            "no CivicIntegration binding in namespace {namespace} selects this pod; it was \
             admitted without the Civic MCP sidecar"
        );
        if !request.dry_run
            && let Some(target) = events::regarding(pod, namespace)
        {
            self.events.not_injected(target, note.clone());
        }
        response.warnings = Some(vec![note]);
        (response, Outcome::NoMatch)
    }
}

fn choose<'a>(
    pod: &Pod,
    namespace: &str,
    integrations: &'a [Arc<CivicIntegration>],
) -> Result<Option<Selected<'a>>, select::SelectError> {
    select::select(
        pod.labels(),
        pod.annotations(),
        Some(namespace),
        integrations.iter().map(|i| &**i),
    )
}

fn deny(response: AdmissionResponse, message: String) -> (AdmissionResponse, Outcome) {
    (response.deny(message), Outcome::Denied)
}

fn with_patch(
    response: AdmissionResponse,
    original: &Pod,
    changed: &Pod,
    outcome: Outcome,
) -> (AdmissionResponse, Outcome) {
    let patch = match inject::patch(original, changed) {
        Ok(p) => p,
        Err(e) => return deny(response, format!("cannot build the patch: {e}")),
    };
    if patch.0.is_empty() {
        return (response, outcome);
    }
    match response.clone().with_patch(patch) {
        Ok(r) => (r, outcome),
        Err(e) => deny(response, e.to_string()),
    }
}

/// The AdmissionReview JSON, with the patch as base64 text (what the apiserver's `[]byte`
/// expects natively; kube would write an array of numbers, four times the size).
fn encode(mut response: AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    let patch = response.patch.take();
    let mut review = serde_json::to_value(response.into_review())?;
    if let (Some(patch), Some(r)) = (patch, review.get_mut("response")) {
        r["patch"] = serde_json::Value::String(BASE64.encode(patch));
    }
    serde_json::to_vec(&review)
}

fn invalid(message: String) -> Reply {
    let review: AdmissionReview<DynamicObject> = AdmissionResponse::invalid(message).into_review();
    Reply {
        status: 400,
        body: serde_json::to_vec(&review).unwrap_or_default(),
        outcome: Outcome::Invalid,
    }
}

#[cfg(test)]
mod tests;
