//! The CivicIntegration controller: one `reconcile` (validate → resolve the Secret → probe the
//! credentials → count pods → status) and one `error_policy`.
//!
//! Status is written by server-side apply under one field manager, and only when the desired
//! status differs from the current one: a no-op reconcile makes no API write. Every condition
//! change is published as an `events.k8s.io` Event on the CivicIntegration.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use civic_sidecar::backoff::{Backoff, Jitter};
use civic_sidecar::exchange::{ClientCredentials, CredentialVerdict};
use civic_sidecar::secret::Secret as SecretValue;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use url::Url;

use crate::conditions;
use crate::crd::{CivicIntegration, CivicIntegrationSpec, CivicIntegrationStatus, SecretKeyRef};
use crate::error::Error;
use crate::leader::LeaderGate;
use crate::metrics::Metrics;
use crate::pods;
use crate::policy::Policy;
use crate::probe::{CredentialProbe, Plan, ProbeCache, ProbeInputs};
use crate::status::{self, CredentialOutcome, Observed, SecretOutcome};
use crate::validation::{self, InvalidSpec, Problem};
use crate::watch;

/// The one field manager for everything the controller applies.
pub const FIELD_MANAGER: &str = "civic-operator";
/// `reportingController` of the Events.
pub const REPORTING_CONTROLLER: &str = "mcp.civic.com/civic-operator";
/// Longest Event note (the API rejects notes over 1 kB).
const MAX_NOTE: usize = 1000;
/// Most remembered status writes before the memo is reset.
const MAX_WRITTEN: usize = 4096;
/// Most integrations reconciled at once.
const CONCURRENCY: u16 = 16;

/// Controller timing.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Healthy integrations are reconciled again after this (pod counts, fresh probes).
    pub resync: Duration,
    /// First retry delay after a transient error; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long a reconcile waits for the pod cache's initial list.
    pub pod_cache_wait: Duration,
    /// Which Secrets the controller may read, and so how it notices a rotated one.
    pub secrets: SecretAccess,
    /// The operator's policy: a spec that breaks it is `InvalidSpec` and is never probed.
    pub policy: Policy,
}

/// Which client secrets the controller may read: exactly what its RBAC grants, so that a
/// compromised controller cannot enumerate the cluster's Secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretAccess {
    /// `get` on Secrets in every namespace, no `list` or `watch` (which would hand over every
    /// Secret's contents): each integration re-reads its Secret every `recheck` to notice a
    /// rotation; the probe runs again only when the Secret's resourceVersion changed.
    ClusterGet { recheck: Duration },
    /// `get`, `list`, `watch` in these namespaces only: rotations are noticed by a watch (of
    /// metadata) at once; integrations elsewhere report `SecretForbidden`.
    Namespaces(BTreeSet<String>),
}

impl SecretAccess {
    /// `None` when the controller may read the Secrets of `ns`, else the outcome that says why
    /// it may not.
    fn refusal(&self, ns: &str) -> Option<SecretOutcome> {
        match self {
            SecretAccess::Namespaces(served) if !served.contains(ns) => Some(
                SecretOutcome::NamespaceNotServed(served.iter().cloned().collect()),
            ),
            _ => None,
        }
    }

    /// How often an integration re-reads its Secret for want of a watch.
    fn recheck(&self) -> Option<Duration> {
        match self {
            SecretAccess::ClusterGet { recheck } => Some(*recheck),
            SecretAccess::Namespaces(_) => None,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            pod_cache_wait: Duration::from_secs(30),
            secrets: SecretAccess::ClusterGet {
                recheck: Duration::from_secs(60),
            },
            policy: Policy::default(),
        }
    }
}

/// What outlives a leadership term.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub probe: Arc<dyn CredentialProbe>,
    pub probes: Arc<ProbeCache>,
    pub metrics: Metrics,
    pub settings: Settings,
    /// This replica's identity (`reportingInstance` of its Events).
    pub identity: String,
}

/// Per-term reconcile context.
pub struct Context {
    shared: Shared,
    pods: pods::PodIndex,
    recorder: Recorder,
    leader: LeaderGate,
    /// Consecutive failures per integration, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The status last written per integration uid during this term: the watch cache may lag
    /// behind our own write, and re-applying (or re-announcing) what is already stored is waste.
    written: Mutex<HashMap<String, CivicIntegrationStatus>>,
}

impl Context {
    pub fn new(shared: Shared, pods: pods::PodIndex, leader: LeaderGate) -> Self {
        let recorder = Recorder::new(
            shared.client.clone(),
            Reporter {
                controller: REPORTING_CONTROLLER.into(),
                instance: Some(shared.identity.clone()),
            },
        );
        Self {
            shared,
            pods,
            recorder,
            leader,
            failures: Mutex::default(),
            written: Mutex::default(),
        }
    }

    fn bump_failures(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_owned()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn reset_failures(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Forgets a deleted integration's failure streak, status memo and metric series.
    fn forget(&self, obj: &CivicIntegration) {
        self.reset_failures(&key_of(obj));
        self.shared
            .metrics
            .forget_integration(&obj.namespace().unwrap_or_default(), &obj.name_any());
        if let Some(uid) = obj.uid() {
            let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
            w.remove(&uid);
        }
    }

    fn written(&self, uid: &str) -> Option<CivicIntegrationStatus> {
        let w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.get(uid).cloned()
    }

    fn remember(&self, uid: String, status: CivicIntegrationStatus) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() >= MAX_WRITTEN {
            w.clear();
        }
        w.insert(uid, status);
    }
}

/// How a successful reconcile ended.
struct Done {
    action: Action,
    /// Rate-limited: nothing was decided, so the failure streak is not reset.
    deferred: bool,
}

fn key_of(obj: &CivicIntegration) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Reconciles one CivicIntegration.
pub async fn reconcile(obj: Arc<CivicIntegration>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let key = key_of(&obj);
    let result = reconcile_inner(&obj, &ctx).await;
    let m = &ctx.shared.metrics;
    m.reconcile_duration.observe(start.elapsed().as_secs_f64());
    match &result {
        Ok(done) => {
            m.reconciles.with_label_values(&["success"]).inc();
            if !done.deferred {
                ctx.reset_failures(&key);
            }
        }
        Err(e) => {
            m.reconciles.with_label_values(&["error"]).inc();
            m.reconcile_errors.with_label_values(&[e.category()]).inc();
        }
    }
    result.map(|done| done.action)
}

/// Transient errors retry with exponential backoff and jitter (at least the server's
/// `Retry-After`); a replica that lost its lease just stops.
pub fn error_policy(obj: Arc<CivicIntegration>, error: &Error, ctx: Arc<Context>) -> Action {
    if matches!(error, Error::NotLeader) {
        return Action::await_change();
    }
    let key = key_of(&obj);
    let failures = ctx.bump_failures(&key);
    let s = &ctx.shared.settings;
    let delay = Backoff {
        base: s.backoff_base,
        max: s.backoff_max,
        jitter: Jitter::Up20,
    }
    .delay(failures);
    let delay = error
        .retry_after()
        .map_or(delay, |ra| ra.min(s.backoff_max).max(delay));
    tracing::warn!(
        integration = %key,
        category = error.category(),
        error = %error,
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// What the Secret stage read.
enum SecretRead {
    Unusable(SecretOutcome),
    Value {
        value: SecretValue,
        uid: Option<String>,
        resource_version: Option<String>,
    },
}

/// Reads the client secret from the integration's own namespace. Surrounding whitespace (the
/// trailing line break of `--from-file` Secrets) is dropped, as the sidecar does with its files.
async fn resolve_secret(client: &Client, ns: &str, r: &SecretKeyRef) -> Result<SecretRead, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match api.get_opt(&r.name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => return Ok(SecretRead::Unusable(SecretOutcome::NotFound)),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Ok(SecretRead::Unusable(SecretOutcome::Forbidden));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(&r.key)) else {
        return Ok(SecretRead::Unusable(SecretOutcome::KeyNotFound));
    };
    let Ok(text) = std::str::from_utf8(&bytes.0) else {
        return Ok(SecretRead::Unusable(SecretOutcome::KeyNotText));
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(SecretRead::Unusable(SecretOutcome::KeyEmpty));
    }
    Ok(SecretRead::Value {
        value: SecretValue::new(text),
        uid: secret.metadata.uid,
        resource_version: secret.metadata.resource_version,
    })
}

/// Stage three: the credential verdict, from the cache or a probe. `Err(wait)` when rate-limited.
async fn credentials(
    ctx: &Context,
    key: &str,
    spec: &CivicIntegrationSpec,
    token_url: &Url,
    read: SecretRead,
) -> Result<(Option<CredentialOutcome>, Option<Duration>, Option<Error>), Duration> {
    let SecretRead::Value {
        value,
        uid,
        resource_version,
    } = read
    else {
        return Ok((None, None, None));
    };
    let inputs = ProbeInputs {
        token_url: spec.token_url.clone(),
        client_id: spec.client_id.clone(),
        secret_uid: uid,
        secret_resource_version: resource_version,
        secret_key: spec.client_secret_ref.key.clone(),
    };
    let probes = &ctx.shared.probes;
    match probes.plan(key, &inputs, Instant::now()) {
        Plan::Wait(d) => Err(d),
        Plan::Reuse(v, fresh) => Ok((Some((&v).into()), Some(fresh), None)),
        Plan::Probe => {
            let creds = ClientCredentials {
                client_id: spec.client_id.clone(),
                client_secret: value,
            };
            let result = ctx.shared.probe.probe(token_url, &creds).await;
            probes.record(key, &inputs, result.as_ref(), Instant::now());
            let probes_metric = &ctx.shared.metrics.probes;
            match result {
                Ok(v) => {
                    let label = match v {
                        CredentialVerdict::Valid => "valid",
                        CredentialVerdict::Invalid { .. } => "invalid",
                    };
                    probes_metric.with_label_values(&[label]).inc();
                    Ok((Some((&v).into()), Some(probes.fresh_for()), None))
                }
                Err(e) => {
                    probes_metric.with_label_values(&["error"]).inc();
                    // No verdict: keep the last one for these inputs rather than flip to Unknown.
                    let outcome = probes.last_verdict(key, &inputs).map_or(
                        CredentialOutcome::ProbeFailed {
                            category: e.category(),
                        },
                        |v| (&v).into(),
                    );
                    Ok((Some(outcome), None, Some(Error::Probe(e))))
                }
            }
        }
    }
}

async fn reconcile_inner(obj: &CivicIntegration, ctx: &Context) -> Result<Done, Error> {
    let ns = obj.namespace().ok_or(Error::MissingNamespace)?;
    let name = obj.name_any();
    let key = key_of(obj);
    let spec = &obj.spec;
    let settings = &ctx.shared.settings;

    let ready = tokio::time::timeout(settings.pod_cache_wait, ctx.pods.wait_until_ready());
    if !ready.await.unwrap_or(false) {
        return Err(Error::PodCacheNotReady(settings.pod_cache_wait));
    }
    let mut observed = Observed {
        spec: validation::validate(spec, &settings.policy),
        secret: None,
        credentials: None,
        bindings: pods::binding_counts(&ctx.pods, &ns, &name, &spec.bindings),
    };
    let mut requeue = settings
        .secrets
        .recheck()
        .map_or(settings.resync, |r| r.min(settings.resync));
    let mut transient = None;
    if observed.spec.is_ok() {
        match Url::parse(&spec.token_url) {
            Err(e) => {
                observed.spec = Err(InvalidSpec(vec![Problem {
                    path: "spec.tokenUrl".into(),
                    message: format!("is not a URL: {e}"),
                }]))
            }
            Ok(token_url) => {
                let read = match settings.secrets.refusal(&ns) {
                    Some(outcome) => SecretRead::Unusable(outcome),
                    None => {
                        resolve_secret(&ctx.shared.client, &ns, &spec.client_secret_ref).await?
                    }
                };
                observed.secret = Some(match &read {
                    SecretRead::Unusable(outcome) => outcome.clone(),
                    SecretRead::Value { .. } => SecretOutcome::Resolved,
                });
                match credentials(ctx, &key, spec, &token_url, read).await {
                    Err(wait) => {
                        return Ok(Done {
                            action: Action::requeue(wait),
                            deferred: true,
                        });
                    }
                    Ok((outcome, fresh, error)) => {
                        observed.credentials = outcome;
                        if let Some(fresh) = fresh {
                            requeue = requeue.min(fresh);
                        }
                        transient = error;
                    }
                }
            }
        }
    }

    let uid = obj.uid().unwrap_or_default();
    let stored = obj.status.clone();
    let written = ctx.written(&uid);
    // Our own last write is the freshest view; the cached object may not have caught up yet.
    let previous = written.clone().or(stored.clone());
    let desired = status::desired(
        obj.metadata.generation,
        &observed,
        &spec.client_secret_ref,
        &ns,
        &spec.token_url,
        previous.as_ref(),
        &conditions::now(),
    );
    let unserved: i64 = observed
        .bindings
        .iter()
        .map(|b| i64::from(b.matched_pods - b.injected_pods))
        .sum();
    ctx.shared.metrics.observe_integration(
        &ns,
        &name,
        desired
            .condition(conditions::READY)
            .is_some_and(|c| c.status == "True"),
        unserved,
    );
    if stored.as_ref() != Some(&desired) && written.as_ref() != Some(&desired) {
        if !ctx.leader.is_leading() {
            return Err(Error::NotLeader);
        }
        let api: Api<CivicIntegration> = Api::namespaced(ctx.shared.client.clone(), &ns);
        let patch = json!({
            "apiVersion": CivicIntegration::api_version(&()),
            "kind": CivicIntegration::kind(&()),
            "status": desired,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {}
            // Deleted since the cache saw it: nothing left to report on.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Ok(Done {
                    action: Action::await_change(),
                    deferred: false,
                });
            }
            Err(e) => return Err(e.into()),
        }
        ctx.shared.metrics.status_writes.inc();
        ctx.remember(uid, desired.clone());
        let before = previous.map(|p| p.conditions).unwrap_or_default();
        for c in conditions::changed(&before, &desired.conditions) {
            publish(ctx, obj, c).await;
        }
    }

    if let Some(e) = transient {
        return Err(e);
    }
    let action = if observed.spec.is_err() {
        // Nothing to retry: the next spec change (or a Secret/pod event) triggers us.
        Action::await_change()
    } else {
        Action::requeue(requeue)
    };
    Ok(Done {
        action,
        deferred: false,
    })
}

/// The Event for one condition change. Failing to publish is logged, not fatal: the status
/// already carries the same information.
async fn publish(ctx: &Context, obj: &CivicIntegration, c: &Condition) {
    let type_ = if c.status == conditions::Status::True.as_str() {
        EventType::Normal
    } else {
        EventType::Warning
    };
    let action = match c.type_.as_str() {
        conditions::SECRET_RESOLVED => "ResolveSecret",
        conditions::CREDENTIALS_VALID => "ProbeCredentials",
        _ => "Reconcile",
    };
    let mut note = format!("{} is {}: {}", c.type_, c.status, c.message);
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_,
        reason: c.reason.clone(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        Ok(()) => {
            let label = if type_ == EventType::Normal {
                "Normal"
            } else {
                "Warning"
            };
            ctx.shared.metrics.events.with_label_values(&[label]).inc();
        }
        Err(e) => tracing::warn!(
            integration = %key_of(obj),
            error = %e,
            "publishing an Event failed"
        ),
    }
}

/// Integrations in the Secret's namespace that reference it as their client secret.
fn integrations_using(
    store: &Store<CivicIntegration>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<CivicIntegration>> {
    let ns = secret.namespace();
    let name = secret.name_any();
    store
        .state()
        .iter()
        .filter(|ci| ci.namespace() == ns && ci.spec.client_secret_ref.name == name)
        .map(|ci| ObjectRef::from_obj(&**ci))
        .collect()
}

/// Every integration in the namespace of a pod trigger (any of them may select its pods).
fn integrations_in_namespace(
    store: &Store<CivicIntegration>,
    pod: &PartialObjectMeta<Pod>,
) -> Vec<ObjectRef<CivicIntegration>> {
    let ns = pod.namespace();
    store
        .state()
        .iter()
        .filter(|ci| ci.namespace() == ns)
        .map(|ci| ObjectRef::from_obj(&**ci))
        .collect()
}

/// Drops what the controller never reads from its cached integrations: field-manager records
/// and `kubectl apply`'s copy of the object, together most of a stored object's size.
fn trim_integration(obj: &mut CivicIntegration) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// Drops the per-integration series when a term ends (the future is dropped on a lost lease).
struct ForgetIntegrationsOnDrop(Metrics);

impl Drop for ForgetIntegrationsOnDrop {
    fn drop(&mut self) {
        self.0.forget_integrations();
    }
}

/// Runs the controller until the returned future is dropped (on losing the lease or shutdown).
pub async fn run(shared: Shared, leader: LeaderGate) {
    let _series = ForgetIntegrationsOnDrop(shared.metrics.clone());
    let client = shared.client.clone();
    let (pod_index, pod_changes) = pods::watch(Api::all(client.clone()));
    let ctx = Arc::new(Context::new(shared, pod_index, leader));
    let (store, writer) = reflector::store();
    let forget = ctx.clone();
    let integrations = watch::resilient(
        "civicintegrations",
        watcher(
            Api::<CivicIntegration>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        ),
    )
    .modify(trim_integration)
    .reflect(writer)
    .inspect(move |event| {
        if let Ok(watcher::Event::Delete(obj)) = event {
            forget.forget(obj);
        }
    })
    .applied_objects();
    let controller = Controller::for_stream(
        watch::objects_only("civicintegrations", integrations),
        store.clone(),
    )
    .with_config(ControllerConfig::default().concurrency(CONCURRENCY));
    // Metadata only: the controller never caches Secret contents. Without the right to watch
    // (cluster-wide mode), rotations are noticed by each integration's recheck instead.
    let served = match &ctx.shared.settings.secrets {
        SecretAccess::ClusterGet { .. } => Vec::new(),
        SecretAccess::Namespaces(served) => served.iter().cloned().collect(),
    };
    let secret_watches = served.iter().map(|ns| {
        watch::resilient(
            "secrets",
            watcher(
                Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
                watcher::Config::default().any_semantic(),
            ),
        )
        .touched_objects()
        .boxed()
    });
    // An empty merge would end at once; no watch means no Secret trigger, ever.
    let secret_changes = if served.is_empty() {
        futures_util::stream::pending().boxed()
    } else {
        futures_util::stream::select_all(secret_watches).boxed()
    };

    let secret_store = store.clone();
    let pod_store_refs = store;
    controller
        .watches_stream(watch::objects_only("secrets", secret_changes), move |s| {
            integrations_using(&secret_store, &s)
        })
        .watches_stream(watch::objects_only("pods", pod_changes), move |p| {
            integrations_in_namespace(&pod_store_refs, &p)
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(integration = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
