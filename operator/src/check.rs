//! `civic-operator check` (also `kubectl civic check` when installed as `kubectl-civic`): is the
//! installation healthy, and if not, what to do. Each check prints one line per finding, `ok`,
//! `warn` or `FAIL`, and a failure carries a hint. Exit status 0: no failure (warnings allowed);
//! 1: some check failed; 2: usage error or the cluster could not be asked.
//!
//! Everything is read with the user's kubeconfig (the webhook check creates a pod with
//! `dryRun=All`, so nothing is stored). The verdicts are pure functions of the objects read, so
//! they are tested without a cluster (`check/tests.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::{CustomResourceExt, ResourceExt};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::annotations::{BINDING_ANNOTATION, INJECT_ENABLED, INJECT_LABEL, binding_ref};
use crate::certs::issue;
use crate::certs::material::TLS_CERT_KEY;
use crate::conditions::READY;
use crate::crd::CivicIntegration;
use crate::inject::{self, SIDECAR_CONTAINER, select};

/// The CRD this binary works with.
pub const CRD_NAME: &str = "civicintegrations.mcp.civic.com";
/// Label of every object the chart renders.
pub const PART_OF: &str = "app.kubernetes.io/part-of=civic-mcp";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// The webhook entry the chart defines.
pub const WEBHOOK_NAME: &str = "inject.mcp.civic.com";
/// The namespace and release name the chart's documentation installs with.
pub const DEFAULT_NAMESPACE: &str = "civic-system";
pub const DEFAULT_FULLNAME: &str = "civic-mcp";
/// Certificates expiring sooner fail; sooner than [`EXPIRY_WARN`] warn.
pub const EXPIRY_FAIL: Duration = Duration::from_secs(7 * 86_400);
pub const EXPIRY_WARN: Duration = Duration::from_secs(30 * 86_400);
/// The no-match warning the webhook returns (see `webhook::admission`).
pub const NO_MATCH_WARNING: &str = "no CivicIntegration binding";
/// Label of the dry-run pod, so that it is recognisable in audit logs.
pub const PROBE_LABEL: &str = "mcp.civic.com/check";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Namespace the operator is installed in. Default: the namespace of the chart's
    /// Deployments (label app.kubernetes.io/part-of=civic-mcp), else civic-system.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Check CivicIntegrations and pods of this namespace only (default: all namespaces).
    #[arg(long)]
    pub workload_namespace: Option<String>,
    /// The operator runs outside the cluster (development, tests): missing Deployments are a
    /// warning, and the leader need not be one of their pods.
    #[arg(long)]
    pub operator_outside: bool,
    /// Leader-election Lease. Default: the controller Deployment's CIVIC_OPERATOR_LEASE_NAME,
    /// else the chart's name.
    #[arg(long)]
    pub lease_name: Option<String>,
    /// MutatingWebhookConfiguration. Default: the webhook Deployment's
    /// CIVIC_OPERATOR_WEBHOOK_CONFIG_NAME, else the chart's name.
    #[arg(long)]
    pub webhook_config_name: Option<String>,
    /// Secret holding the webhook's serving certificate (`tls.crt`). Default: the webhook
    /// Deployment's CIVIC_OPERATOR_WEBHOOK_CERT_SECRET, else the chart's name.
    #[arg(long)]
    pub webhook_cert_secret: Option<String>,
    /// Kubeconfig context to use (default: the current one). `kubectl civic` does not pass
    /// kubectl's own `--context` on, hence this.
    #[arg(long)]
    pub context: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
}

/// How a finding counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One printed line: which check, its verdict, what was found and, unless it passed, what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    pub check: &'static str,
    pub verdict: Verdict,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Line {
    pub fn pass(check: &'static str, message: impl Into<String>) -> Self {
        Self {
            check,
            verdict: Verdict::Pass,
            message: message.into(),
            hint: None,
        }
    }
    pub fn warn(check: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            check,
            verdict: Verdict::Warn,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
    pub fn fail(check: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            check,
            verdict: Verdict::Fail,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

// Check names, in the order they run.
pub const CRD: &str = "crd";
pub const OPERATOR: &str = "operator";
pub const LEADER: &str = "leader";
pub const WEBHOOK_TLS: &str = "webhook-tls";
pub const WEBHOOK_CALL: &str = "webhook-call";
pub const INTEGRATIONS: &str = "integrations";
pub const OPTED_IN: &str = "opted-in-pods";
pub const SIDECARS: &str = "sidecars";

const APPLY_CRD: &str = "civic-operator crd | kubectl apply --server-side -f -  (or helm upgrade the chart, which installs it)";

// ---------------------------------------------------------------- 1. the CRD

/// The installed CRD against this binary's: present, Established, serving (and storing) the same
/// versions with the same schema.
pub fn check_crd(
    installed: Option<&CustomResourceDefinition>,
    ours: &CustomResourceDefinition,
) -> Vec<Line> {
    let Some(crd) = installed else {
        return vec![Line::fail(
            CRD,
            format!("CustomResourceDefinition {CRD_NAME} is not installed"),
            APPLY_CRD,
        )];
    };
    let mut lines = Vec::new();
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Established"));
    match established {
        Some(c) if c.status == "True" => {}
        other => lines.push(Line::fail(
            CRD,
            format!(
                "{CRD_NAME} is not Established{}",
                other
                    .and_then(|c| c.message.as_deref())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            format!("kubectl describe crd {CRD_NAME}"),
        )),
    }
    let mut summary = Vec::new();
    for want in &ours.spec.versions {
        let have = crd.spec.versions.iter().find(|v| v.name == want.name);
        let Some(have) = have.filter(|v| v.served) else {
            lines.push(Line::fail(
                CRD,
                format!(
                    "{CRD_NAME} does not serve {}/{}, which this binary uses",
                    ours.spec.group, want.name
                ),
                APPLY_CRD,
            ));
            continue;
        };
        if want.storage && !have.storage {
            lines.push(Line::warn(
                CRD,
                format!(
                    "{CRD_NAME} stores another version than {}, this binary's",
                    want.name
                ),
                APPLY_CRD,
            ));
        }
        let schema = |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
            serde_json::to_value(&v.schema).unwrap_or(Value::Null)
        };
        if schema(have) != schema(want) {
            lines.push(Line::warn(
                CRD,
                format!(
                    "the schema of {}/{} differs from this binary's: the CRD is older or newer \
                     than civic-operator {}",
                    ours.spec.group,
                    want.name,
                    env!("CARGO_PKG_VERSION")
                ),
                APPLY_CRD,
            ));
        }
        summary.push(want.name.clone());
    }
    if lines.is_empty() {
        lines.push(Line::pass(
            CRD,
            format!(
                "{CRD_NAME} is Established and serves {} with this binary's schema",
                summary.join(", ")
            ),
        ));
    }
    lines
}

// ---------------------------------------------------------------- 2. operator pods

/// The Deployment of `component` (`controller`, `webhook`) among the chart's.
pub fn component<'a>(deployments: &'a [Deployment], component: &str) -> Option<&'a Deployment> {
    deployments
        .iter()
        .find(|d| d.labels().get(COMPONENT_LABEL).map(String::as_str) == Some(component))
}

/// Both Deployments present and available: at least one ready replica, all desired ones ready.
pub fn check_operator(namespace: &str, deployments: &[Deployment], outside: bool) -> Vec<Line> {
    let mut lines = Vec::new();
    for part in ["controller", "webhook"] {
        let Some(d) = component(deployments, part) else {
            let message = format!(
                "no {part} Deployment (label {PART_OF}, {COMPONENT_LABEL}={part}) in namespace \
                 {namespace}"
            );
            lines.push(if outside {
                Line::warn(
                    OPERATOR,
                    format!("{message}; --operator-outside: assuming it runs elsewhere"),
                    "drop --operator-outside once the chart is installed",
                )
            } else {
                Line::fail(
                    OPERATOR,
                    message,
                    "install the chart (helm install civic-mcp charts/civic-mcp -n civic-system \
                     --create-namespace), or pass --namespace where it is installed",
                )
            });
            continue;
        };
        let name = d.name_any();
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        let hint = format!(
            "kubectl -n {namespace} describe deployment {name}; kubectl -n {namespace} logs \
             deployment/{name}"
        );
        if desired == 0 {
            lines.push(Line::fail(
                OPERATOR,
                format!("{part} Deployment {name} is scaled to 0"),
                format!("kubectl -n {namespace} scale deployment {name} --replicas=2"),
            ));
        } else if ready < 1 {
            lines.push(Line::fail(
                OPERATOR,
                format!("{part} Deployment {name}: 0/{desired} replicas ready"),
                hint,
            ));
        } else if ready < desired {
            lines.push(Line::warn(
                OPERATOR,
                format!("{part} Deployment {name}: {ready}/{desired} replicas ready"),
                hint,
            ));
        } else {
            lines.push(Line::pass(
                OPERATOR,
                format!("{part} Deployment {name}: {ready}/{desired} replicas ready"),
            ));
        }
    }
    lines
}

/// Whether a pod still counts: not finished, not being deleted.
pub fn is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Exactly one leader: the Lease is held, renewed within its duration and, when the controller
/// runs in the cluster (`controller_pods` given), held by one of its live pods.
pub fn check_leader(
    namespace: &str,
    lease_name: &str,
    lease: Option<&Lease>,
    controller_pods: Option<&[Pod]>,
    now: SystemTime,
) -> Line {
    let hint = format!(
        "kubectl -n {namespace} logs deployment/<release>-controller (the controller elects a \
         leader through Lease {lease_name}; RBAC must allow get/update on it)"
    );
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Line::fail(
            LEADER,
            format!("Lease {namespace}/{lease_name} not found: no controller was ever elected"),
            hint,
        );
    };
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return Line::fail(
            LEADER,
            format!("Lease {namespace}/{lease_name} is not held: no controller leads"),
            hint,
        );
    };
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(0) as u64);
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| SystemTime::from(t.0))
        .or_else(|| spec.acquire_time.as_ref().map(|t| SystemTime::from(t.0)));
    let age = renewed.and_then(|r| now.duration_since(r).ok());
    if renewed.is_none() || age.is_some_and(|a| a > duration) {
        return Line::fail(
            LEADER,
            format!(
                "Lease {namespace}/{lease_name} held by {holder} expired{}: no live leader",
                age.map(|a| format!(
                    " (renewed {}s ago, valid {}s)",
                    a.as_secs(),
                    duration.as_secs()
                ))
                .unwrap_or_default()
            ),
            hint,
        );
    }
    if let Some(pods) = controller_pods
        && !pods.iter().any(|p| is_live(p) && p.name_any() == holder)
    {
        return Line::fail(
            LEADER,
            format!(
                "Lease {namespace}/{lease_name} is held by {holder}, which is not a live \
                 controller pod"
            ),
            hint,
        );
    }
    Line::pass(
        LEADER,
        format!(
            "{holder} leads (Lease {namespace}/{lease_name} renewed {}s ago)",
            age.unwrap_or_default().as_secs()
        ),
    )
}

// ---------------------------------------------------------------- 3. webhook TLS

/// The entry of the configuration that injects.
pub fn inject_webhook(
    config: &MutatingWebhookConfiguration,
) -> Option<&k8s_openapi::api::admissionregistration::v1::MutatingWebhook> {
    let hooks = config.webhooks.as_deref().unwrap_or_default();
    hooks
        .iter()
        .find(|w| w.name == WEBHOOK_NAME)
        .or(hooks.first())
}

/// The name the apiserver checks the webhook's certificate against.
pub fn server_name(config: &MutatingWebhookConfiguration) -> Option<String> {
    let client = &inject_webhook(config)?.client_config;
    if let Some(svc) = &client.service {
        return Some(format!("{}.{}.svc", svc.name, svc.namespace));
    }
    let url = url::Url::parse(client.url.as_deref()?).ok()?;
    Some(
        url.host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}

/// Whether `leaf` (PEM) verifies against `ca` (PEM) alone, for `name`, at `now`.
pub fn verify_chain(leaf: &str, ca: &str, name: &str, now: SystemTime) -> Result<(), String> {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier as _;
    let end = CertificateDer::from_pem_slice(leaf.as_bytes()).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let name =
        rustls_pki_types::ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    verifier
        .verify_server_cert(
            &end,
            &[],
            &name,
            &[],
            rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(secs)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn expiry_line(what: &str, not_after: SystemTime, now: SystemTime, hint: &str) -> Line {
    let left = not_after.duration_since(now).unwrap_or_default();
    let days = left.as_secs() / 86_400;
    let when = k8s_openapi::jiff::Timestamp::try_from(not_after)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let message = format!("{what} expires in {days} days ({when})");
    if left < EXPIRY_FAIL {
        Line::fail(WEBHOOK_TLS, message, hint)
    } else if left < EXPIRY_WARN {
        Line::warn(WEBHOOK_TLS, message, hint)
    } else {
        Line::pass(WEBHOOK_TLS, message)
    }
}

/// The webhook configuration exists, its `caBundle` verifies the serving certificate of the
/// TLS Secret (`tls_crt`: `Ok(None)` when the Secret or key is absent, `Err` when it could not
/// be read) for the name the apiserver calls, and neither expires within [`EXPIRY_FAIL`].
pub fn check_webhook_tls(
    namespace: &str,
    config_name: &str,
    config: Option<&MutatingWebhookConfiguration>,
    secret_name: &str,
    tls_crt: Result<Option<String>, String>,
    now: SystemTime,
) -> Vec<Line> {
    let Some(config) = config else {
        return vec![Line::fail(
            WEBHOOK_TLS,
            format!(
                "MutatingWebhookConfiguration {config_name} not found: opted-in pods are \
                 admitted without the sidecar"
            ),
            "helm upgrade the chart (it renders the configuration), or pass \
             --webhook-config-name",
        )];
    };
    let restart = format!(
        "the webhook rewrites caBundle from its Secret within seconds; if this persists, kubectl \
         -n {namespace} rollout restart deployment/<release>-webhook and read its logs"
    );
    let bundle = inject_webhook(config)
        .and_then(|w| w.client_config.ca_bundle.as_ref())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    let cas = issue::split(&bundle);
    if cas.is_empty() {
        return vec![Line::fail(
            WEBHOOK_TLS,
            format!(
                "the caBundle of {config_name} holds no certificate: the apiserver cannot call \
                 the webhook"
            ),
            restart,
        )];
    }
    let leaf = match tls_crt {
        Ok(Some(pem)) if !issue::split(&pem).is_empty() => pem,
        Ok(_) => {
            return vec![Line::warn(
                WEBHOOK_TLS,
                format!(
                    "{config_name} has a caBundle ({} CA), but Secret {namespace}/{secret_name} \
                     has no {TLS_CERT_KEY}: the serving certificate cannot be checked",
                    cas.len()
                ),
                "with cert-manager, pass --webhook-cert-secret <its Secret>; otherwise the \
                 webhook has not written its certificate yet: read its logs",
            )];
        }
        Err(e) => {
            return vec![Line::warn(
                WEBHOOK_TLS,
                format!("reading Secret {namespace}/{secret_name} failed ({e})"),
                "run as a user who may read that Secret, or pass --webhook-cert-secret",
            )];
        }
    };
    let Some(name) = server_name(config) else {
        return vec![Line::fail(
            WEBHOOK_TLS,
            format!("{config_name} names neither a Service nor a URL to call"),
            "helm upgrade the chart",
        )];
    };
    let mut errors = Vec::new();
    let signer = cas
        .iter()
        .find(|ca| match verify_chain(&leaf, ca, &name, now) {
            Ok(()) => true,
            Err(e) => {
                errors.push(e);
                false
            }
        });
    let Some(signer) = signer else {
        errors.dedup();
        return vec![Line::fail(
            WEBHOOK_TLS,
            format!(
                "the serving certificate in Secret {namespace}/{secret_name} does not verify \
                 for {name} against the caBundle of {config_name} ({} CA: {}): the apiserver \
                 refuses the webhook's TLS",
                cas.len(),
                errors.join("; ")
            ),
            restart,
        )];
    };
    let renew = "the operator renews self-managed certificates well before expiry: read the \
                 webhook's logs (with cert-manager, check its Certificate)";
    let mut lines = vec![Line::pass(
        WEBHOOK_TLS,
        format!(
            "the caBundle of {config_name} verifies the serving certificate of Secret \
             {namespace}/{secret_name} for {name}"
        ),
    )];
    match issue::not_after(&leaf) {
        Ok(t) => lines.push(expiry_line("the serving certificate", t, now, renew)),
        Err(e) => lines.push(Line::fail(
            WEBHOOK_TLS,
            format!("serving certificate: {e}"),
            renew,
        )),
    }
    if let Ok(t) = issue::not_after(signer) {
        lines.push(expiry_line("its CA", t, now, renew));
    }
    lines
}

// ---------------------------------------------------------------- 4. the webhook answers

/// The pod the webhook check creates with `dryRun=All`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// `<integration>/<binding>` expected to inject it; `None`: no ready binding could be
    /// targeted, so the no-match warning is expected.
    pub binding: Option<String>,
}

/// Labels that satisfy `selector`, when that is simple to construct.
pub fn labels_for(selector: &LabelSelector) -> Option<BTreeMap<String, String>> {
    let mut labels = selector.match_labels.clone().unwrap_or_default();
    for e in selector.match_expressions.iter().flatten() {
        match e.operator.as_str() {
            "In" => {
                let v = e.values.as_ref()?.first()?;
                labels.insert(e.key.clone(), v.clone());
            }
            "Exists" => {
                labels.insert(e.key.clone(), "civic-check".into());
            }
            "DoesNotExist" if !labels.contains_key(&e.key) => {}
            "NotIn"
                if labels
                    .get(&e.key)
                    .is_none_or(|v| !e.values.iter().flatten().any(|x| x == v)) => {}
            _ => return None,
        }
    }
    Some(labels)
}

/// A pod the webhook should inject: the first binding of a Ready integration (in
/// `workload_namespace` when given) whose selector is simple to satisfy; otherwise a pod no
/// binding selects.
pub fn plan_probe(integrations: &[CivicIntegration], workload_namespace: Option<&str>) -> Probe {
    let mut base = BTreeMap::from([
        (INJECT_LABEL.to_owned(), INJECT_ENABLED.to_owned()),
        (PROBE_LABEL.to_owned(), "dry-run".to_owned()),
    ]);
    for ci in integrations {
        let ns = ci.namespace().unwrap_or_default();
        if workload_namespace.is_some_and(|w| w != ns) || !is_ready(ci) {
            continue;
        }
        for b in &ci.spec.bindings {
            if let Some(labels) = labels_for(&b.pod_selector) {
                let mut labels = labels;
                labels.extend(base.clone());
                return Probe {
                    namespace: ns,
                    labels,
                    binding: Some(binding_ref(&ci.name_any(), &b.name)),
                };
            }
        }
    }
    let namespace = workload_namespace
        .map(str::to_owned)
        .or_else(|| integrations.iter().find_map(|c| c.namespace()))
        .unwrap_or_else(|| "default".into());
    base.insert(
        "app.kubernetes.io/name".into(),
        "civic-operator-check".into(),
    );
    Probe {
        namespace,
        labels: base,
        binding: None,
    }
}

/// The dry-run pod's manifest.
pub fn probe_pod(probe: &Probe, suffix: &str) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(b) = &probe.binding {
        annotations.insert(BINDING_ANNOTATION.into(), json!(b));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("civic-operator-check-{suffix}"),
            "namespace": probe.namespace,
            "labels": probe.labels,
            "annotations": annotations,
        },
        // `restricted` Pod Security and a quota that demands limits must not refuse it: the
        // check is about the webhook.
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "check", "image": "registry.k8s.io/pause:3.10",
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "1m", "memory": "8Mi"},
                              "limits": {"cpu": "10m", "memory": "16Mi"}},
            }],
        },
    })
}

/// What the apiserver answered to the dry-run create.
#[derive(Clone, Debug, PartialEq)]
pub enum DryRun {
    Admitted {
        pod: Box<Pod>,
        warnings: Vec<String>,
    },
    Refused {
        code: u16,
        message: String,
    },
}

/// The webhook was called: the pod came back injected, or (no binding targeted) with the
/// webhook's no-match warning.
pub fn check_webhook_call(operator_ns: &str, probe: &Probe, answer: &DryRun) -> Line {
    let ns = &probe.namespace;
    let hint_down = format!(
        "the webhook Deployment must have ready pods behind its Service: kubectl -n \
         {operator_ns} get pods -l {COMPONENT_LABEL}=webhook; kubectl -n {operator_ns} logs \
         deployment/<release>-webhook"
    );
    match answer {
        DryRun::Refused { code, message } if message.contains("failed calling webhook") => {
            Line::fail(
                WEBHOOK_CALL,
                format!(
                    "a dry-run pod in {ns} was refused: the apiserver could not call the \
                     webhook (HTTP {code}: {message})"
                ),
                hint_down,
            )
        }
        DryRun::Refused { code, message } => Line::fail(
            WEBHOOK_CALL,
            format!("a dry-run pod in {ns} was refused (HTTP {code}: {message})"),
            "the message says what the webhook (or the apiserver) objects to",
        ),
        DryRun::Admitted { pod, warnings } => {
            let injected = inject::is_injected(pod);
            let matched = warnings.iter().any(|w| w.contains(NO_MATCH_WARNING));
            match (&probe.binding, injected) {
                (Some(b), true) => Line::pass(
                    WEBHOOK_CALL,
                    format!("the webhook injected a dry-run pod in {ns} (binding {b})"),
                ),
                (Some(b), false) => Line::fail(
                    WEBHOOK_CALL,
                    format!(
                        "a dry-run pod in {ns} for binding {b} was admitted without the sidecar{}",
                        if warnings.is_empty() {
                            " and no warning: the webhook was not called".to_owned()
                        } else {
                            format!(" ({})", warnings.join("; "))
                        }
                    ),
                    format!(
                        "is namespace {ns} excluded by the configuration's namespaceSelector \
                         (label {INJECT_LABEL}=disabled, or webhook.excludedNamespaces)? Is the \
                         webhook configuration's objectSelector the chart's?"
                    ),
                ),
                (None, _) if matched => Line::pass(
                    WEBHOOK_CALL,
                    format!(
                        "the webhook answered a dry-run pod in {ns} (no Ready integration to \
                         inject with: it warned that no binding selects the pod)"
                    ),
                ),
                (None, _) => Line::fail(
                    WEBHOOK_CALL,
                    format!(
                        "a dry-run opted-in pod in {ns} was admitted without the webhook's warning: the webhook was not called"
                    ),
                    format!(
                        "is namespace {ns} excluded by the configuration's namespaceSelector? \
                         Pass --workload-namespace <a namespace with workloads>"
                    ),
                ),
            }
        }
    }
}

// ---------------------------------------------------------------- 5. integrations

pub fn is_ready(ci: &CivicIntegration) -> bool {
    ci.condition(READY).is_some_and(|c| c.status == "True")
}

/// Every CivicIntegration is Ready; each one that is not, with its reason and message.
pub fn check_integrations(integrations: &[CivicIntegration], scope: &str) -> Vec<Line> {
    if integrations.is_empty() {
        return vec![Line::warn(
            INTEGRATIONS,
            format!("no CivicIntegration {scope}: no pod gets a sidecar"),
            "create one (README: Kubernetes quick start)",
        )];
    }
    let mut lines = Vec::new();
    for ci in integrations {
        if is_ready(ci) {
            continue;
        }
        let (ns, name) = (ci.namespace().unwrap_or_default(), ci.name_any());
        let why = match ci.condition(READY) {
            Some(c) => format!("Ready={} {}: {}", c.status, c.reason, c.message),
            None => "no Ready condition yet: the controller has not reconciled it".to_owned(),
        };
        lines.push(Line::fail(
            INTEGRATIONS,
            format!("{ns}/{name}: {why}"),
            format!("kubectl -n {ns} describe civicintegration {name}"),
        ));
    }
    if lines.is_empty() {
        lines.push(Line::pass(
            INTEGRATIONS,
            format!(
                "{} CivicIntegration(s) {scope}, all Ready",
                integrations.len()
            ),
        ));
    }
    lines
}

// ---------------------------------------------------------------- 6. opted-in pods without the sidecar

/// A workload to `kubectl rollout restart`: its kind, lower case, and name.
pub type Workload = (String, String);

/// What recreates a pod: `kind/name` to `kubectl rollout restart`, or none (bare pods, Jobs,
/// ReplicaSets without a Deployment).
pub fn restart_target(pod: &Pod, replica_sets: &[ReplicaSet]) -> Option<Workload> {
    let ns = pod.namespace();
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    match owner.kind.as_str() {
        "StatefulSet" | "DaemonSet" | "Deployment" => {
            Some((owner.kind.to_ascii_lowercase(), owner.name.clone()))
        }
        "ReplicaSet" => replica_sets
            .iter()
            .find(|rs| rs.name_any() == owner.name && rs.namespace() == ns)
            .and_then(|rs| {
                rs.owner_references()
                    .iter()
                    .find(|o| o.controller == Some(true) && o.kind == "Deployment")
            })
            .map(|d| ("deployment".to_owned(), d.name.clone())),
        _ => None,
    }
}

/// Live opted-in pods without the sidecar that a binding selects (created before the webhook
/// was installed, or while its configuration was absent), grouped by what to restart.
/// `integrations`: `None` when they could not be read (then every such pod counts).
pub fn check_opted_in(
    pods: &[Pod],
    integrations: Option<&[CivicIntegration]>,
    replica_sets: &[ReplicaSet],
) -> Vec<Line> {
    let mut stale: BTreeMap<(String, Option<Workload>), Vec<String>> = BTreeMap::new();
    let mut unselected = BTreeSet::new();
    let mut opted = 0;
    for pod in pods {
        if !is_live(pod) || !crate::annotations::opted_in(pod.labels()) {
            continue;
        }
        opted += 1;
        if inject::is_injected(pod) {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let selected = match integrations {
            None => true,
            Some(list) => !matches!(
                select::select(pod.labels(), pod.annotations(), Some(&ns), list.iter()),
                Ok(None)
            ),
        };
        if !selected {
            unselected.insert(format!("{ns}/{}", pod.name_any()));
            continue;
        }
        stale
            .entry((ns, restart_target(pod, replica_sets)))
            .or_default()
            .push(pod.name_any());
    }
    let mut lines = Vec::new();
    for ((ns, target), names) in stale {
        let list = names.join(", ");
        lines.push(match target {
            Some((kind, name)) => Line::fail(
                OPTED_IN,
                format!(
                    "{ns}: {kind}/{name} runs {} opted-in pod(s) without the sidecar ({list})",
                    names.len()
                ),
                format!("kubectl -n {ns} rollout restart {kind}/{name}"),
            ),
            None => Line::fail(
                OPTED_IN,
                format!(
                    "{ns}: opted-in pod(s) without the sidecar and no workload to restart ({list})"
                ),
                format!(
                    "delete and recreate them: kubectl -n {ns} delete pod {}",
                    names.join(" ")
                ),
            ),
        });
    }
    if !unselected.is_empty() {
        lines.push(Line::warn(
            OPTED_IN,
            format!(
                "{} opted-in pod(s) that no binding selects run without the sidecar ({})",
                unselected.len(),
                unselected.into_iter().collect::<Vec<_>>().join(", ")
            ),
            format!(
                "add a binding whose podSelector matches them, or remove their {INJECT_LABEL} label"
            ),
        ));
    }
    if lines.is_empty() {
        lines.push(Line::pass(
            OPTED_IN,
            format!("all {opted} live opted-in pod(s) carry the sidecar"),
        ));
    }
    lines
}

// ---------------------------------------------------------------- 7. sidecar readiness

/// The first line of `text`, at most 200 characters.
fn brief(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or_default();
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

/// Why a sidecar container is not ready, from its status.
pub fn not_ready_reason(status: &ContainerStatus) -> String {
    let mut parts = vec![format!("restarts {}", status.restart_count)];
    let state = status.state.as_ref();
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        parts.push(format!(
            "waiting: {}{}",
            w.reason.as_deref().unwrap_or("unknown"),
            w.message
                .as_deref()
                .map(|m| format!(" ({})", brief(m)))
                .unwrap_or_default()
        ));
    } else if state.and_then(|s| s.running.as_ref()).is_some() {
        parts.push("running, readiness probe failing".to_owned());
    }
    if let Some(t) = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
    {
        parts.push(format!(
            "last terminated: {} (exit code {}){}",
            t.reason.as_deref().unwrap_or("unknown"),
            t.exit_code,
            t.message
                .as_deref()
                .map(|m| format!(": {}", brief(m)))
                .unwrap_or_default()
        ));
    }
    parts.join("; ")
}

/// Live pods whose `civic-sidecar` reports not ready, with why.
pub fn check_sidecars(pods: &[Pod]) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut seen = 0;
    for pod in pods.iter().filter(|p| is_live(p)) {
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        let sidecar = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
            .find(|c| c.name == SIDECAR_CONTAINER);
        let Some(sidecar) = sidecar else { continue };
        seen += 1;
        if sidecar.ready {
            continue;
        }
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        lines.push(Line::fail(
            SIDECARS,
            format!(
                "{ns}/{name}: {SIDECAR_CONTAINER} not ready ({})",
                not_ready_reason(sidecar)
            ),
            format!("kubectl -n {ns} logs {name} -c {SIDECAR_CONTAINER} --previous"),
        ));
    }
    if lines.is_empty() {
        lines.push(Line::pass(
            SIDECARS,
            format!("{seen} sidecar(s) reporting status, all ready"),
        ));
    }
    lines
}

// ---------------------------------------------------------------- output

/// `0` without failures, `1` with.
pub fn exit_status(lines: &[Line]) -> u8 {
    u8::from(lines.iter().any(|l| l.verdict == Verdict::Fail))
}

pub fn render_text(namespace: &str, lines: &[Line]) -> String {
    let mut out = format!("civic-operator check (operator namespace {namespace})\n\n");
    for l in lines {
        let mark = match l.verdict {
            Verdict::Pass => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!("[{mark}] {:<14} {}\n", l.check, l.message));
        if l.verdict != Verdict::Pass
            && let Some(h) = &l.hint
        {
            out.push_str(&format!("{:22}hint: {h}\n", ""));
        }
    }
    let count = |v| lines.iter().filter(|l| l.verdict == v).count();
    let (fails, warns) = (count(Verdict::Fail), count(Verdict::Warn));
    out.push_str(&if fails == 0 {
        format!("\nAll checks passed ({warns} warning(s)).\n")
    } else {
        format!("\n{fails} check(s) failed, {warns} warning(s).\n")
    });
    out
}

pub fn render_json(namespace: &str, lines: &[Line]) -> String {
    let v = json!({
        "namespace": namespace,
        "ok": exit_status(lines) == 0,
        "checks": lines,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

// ---------------------------------------------------------------- gathering

/// Could not ask the cluster at all (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("the apiserver cannot be reached: {0}")]
    Unreachable(#[source] kube::Error),
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn env_of(d: Option<&Deployment>, name: &str) -> Option<String> {
    d?.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// The Secret mounted at the webhook's certificate directory (cert-manager mode, where the
/// environment names the directory, not the Secret).
pub fn cert_dir_secret(d: Option<&Deployment>) -> Option<String> {
    let dir = env_of(d, "CIVIC_OPERATOR_WEBHOOK_CERT_DIR")?;
    let spec = d?.spec.as_ref()?.template.spec.as_ref()?;
    let volume = spec
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .find(|m| m.mount_path.trim_end_matches('/') == dir.trim_end_matches('/'))?
        .name
        .clone();
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)?
        .secret
        .as_ref()?
        .secret_name
        .clone()
}

/// The chart's `fullname` from a Deployment named `<fullname>-<component>`.
fn fullname(deployments: &[Deployment]) -> String {
    deployments
        .iter()
        .find_map(|d| {
            let name = d.name_any();
            let c = d.labels().get(COMPONENT_LABEL)?;
            name.strip_suffix(&format!("-{c}")).map(str::to_owned)
        })
        .unwrap_or_else(|| DEFAULT_FULLNAME.into())
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("HTTP {}: {}", s.code, s.message),
        other => other.to_string(),
    }
}

/// A failed read, as a line of `check`.
fn unreadable(check: &'static str, what: &str, e: &kube::Error) -> Line {
    Line::fail(
        check,
        format!("reading {what} failed ({})", api_message(e)),
        "run as a user who may read it (kubectl auth can-i), or narrow with --workload-namespace",
    )
}

async fn list<K>(api: Api<K>, lp: &ListParams) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    Ok(api.list(lp).await?.items)
}

fn scoped<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The dry-run create, by a raw POST so that the `Warning` headers are seen.
async fn dry_run(client: &kube::Client, probe: &Probe) -> Result<DryRun, kube::Error> {
    let suffix = format!("{:08x}", rand::random::<u32>());
    let body = serde_json::to_vec(&probe_pod(probe, &suffix)).unwrap_or_default();
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{}/pods?dryRun=All",
        probe.namespace
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(kube::client::Body::from(body))
    .map_err(kube::Error::HttpError)?;
    let response = client.send(request).await?;
    let code = response.status().as_u16();
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| kube::Error::Service(Box::new(e)))?
        .to_bytes();
    if code >= 400 {
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Ok(DryRun::Refused { code, message });
    }
    let pod: Pod = serde_json::from_slice(&bytes).map_err(kube::Error::SerdeError)?;
    Ok(DryRun::Admitted {
        pod: Box::new(pod),
        warnings,
    })
}

/// Runs every check. Errors only when the cluster cannot be asked at all.
pub async fn run(
    client: &kube::Client,
    args: &CheckArgs,
) -> Result<(String, Vec<Line>), CheckError> {
    client
        .apiserver_version()
        .await
        .map_err(CheckError::Unreachable)?;
    let part_of = ListParams::default().labels(PART_OF);
    let namespace = match &args.namespace {
        Some(ns) => ns.clone(),
        None => list(Api::<Deployment>::all(client.clone()), &part_of)
            .await
            .ok()
            .and_then(|ds| ds.iter().find_map(|d| d.namespace()))
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
    };
    let now = SystemTime::now();
    let mut lines = Vec::new();

    // 1.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(CRD_NAME).await {
        Ok(crd) => lines.extend(check_crd(crd.as_ref(), &CivicIntegration::crd())),
        Err(e) => lines.push(unreadable(CRD, "the CRD", &e)),
    }

    // 2.
    let deployments = match list(
        Api::<Deployment>::namespaced(client.clone(), &namespace),
        &part_of,
    )
    .await
    {
        Ok(ds) => {
            lines.extend(check_operator(&namespace, &ds, args.operator_outside));
            ds
        }
        Err(e) => {
            lines.push(unreadable(OPERATOR, "the operator's Deployments", &e));
            Vec::new()
        }
    };
    let fullname = fullname(&deployments);
    let controller = component(&deployments, "controller");
    let webhook = component(&deployments, "webhook");
    let lease_name = args
        .lease_name
        .clone()
        .or_else(|| env_of(controller, "CIVIC_OPERATOR_LEASE_NAME"))
        .unwrap_or_else(|| format!("{fullname}-operator"));
    // Outside the cluster the leader is the outside process, never one of the pods.
    let controller_pods = match controller
        .filter(|_| !args.operator_outside)
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.selector.match_labels.as_ref())
    {
        Some(sel) => {
            let sel = sel
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            list(
                Api::<Pod>::namespaced(client.clone(), &namespace),
                &ListParams::default().labels(&sel),
            )
            .await
            .ok()
        }
        None => None,
    };
    match Api::<Lease>::namespaced(client.clone(), &namespace)
        .get_opt(&lease_name)
        .await
    {
        Ok(lease) => lines.push(check_leader(
            &namespace,
            &lease_name,
            lease.as_ref(),
            controller_pods.as_deref(),
            now,
        )),
        Err(e) => lines.push(unreadable(LEADER, "the leader Lease", &e)),
    }

    // 3.
    let config_name = args
        .webhook_config_name
        .clone()
        .or_else(|| env_of(webhook, "CIVIC_OPERATOR_WEBHOOK_CONFIG_NAME"))
        .unwrap_or_else(|| format!("{fullname}-{namespace}"));
    let secret_name = args
        .webhook_cert_secret
        .clone()
        .or_else(|| env_of(webhook, "CIVIC_OPERATOR_WEBHOOK_CERT_SECRET"))
        .or_else(|| cert_dir_secret(webhook))
        .unwrap_or_else(|| format!("{fullname}-webhook-tls"));
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = match configs.get_opt(&config_name).await {
        Ok(c) => c,
        Err(e) => {
            lines.push(unreadable(WEBHOOK_TLS, "the webhook configuration", &e));
            None
        }
    };
    // Only `tls.crt` (public) leaves this function; the Secret's other keys are dropped here.
    let tls_crt = Api::<Secret>::namespaced(client.clone(), &namespace)
        .get_opt(&secret_name)
        .await
        .map(|s| {
            s.and_then(|s| s.data)
                .and_then(|d| d.get(TLS_CERT_KEY).cloned())
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        })
        .map_err(|e| api_message(&e));
    lines.extend(check_webhook_tls(
        &namespace,
        &config_name,
        config.as_ref(),
        &secret_name,
        tls_crt,
        now,
    ));

    // 5. (read before 4: the dry run targets a Ready integration)
    let wns = args.workload_namespace.as_deref();
    let scope = wns.map_or("in any namespace".to_owned(), |ns| {
        format!("in namespace {ns}")
    });
    let integrations = match list(
        scoped::<CivicIntegration>(client, wns),
        &ListParams::default(),
    )
    .await
    {
        Ok(list) => Some(list),
        Err(e) => {
            lines.push(unreadable(INTEGRATIONS, "CivicIntegrations", &e));
            None
        }
    };

    // 4.
    let probe = plan_probe(integrations.as_deref().unwrap_or_default(), wns);
    match dry_run(client, &probe).await {
        Ok(answer) => lines.push(check_webhook_call(&namespace, &probe, &answer)),
        Err(e) => lines.push(unreadable(
            WEBHOOK_CALL,
            "a dry-run pod creation's answer",
            &e,
        )),
    }
    if let Some(list) = &integrations {
        lines.extend(check_integrations(list, &scope));
    }

    // 6. and 7.
    let opted = ListParams::default().labels(&crate::annotations::opted_in_selector());
    match list(scoped::<Pod>(client, wns), &opted).await {
        Ok(pods) => {
            let replica_sets = list(scoped::<ReplicaSet>(client, wns), &ListParams::default())
                .await
                .unwrap_or_default();
            lines.extend(check_opted_in(
                &pods,
                integrations.as_deref(),
                &replica_sets,
            ));
            lines.extend(check_sidecars(&pods));
        }
        Err(e) => {
            lines.push(unreadable(OPTED_IN, "opted-in pods", &e));
        }
    }
    Ok((namespace, lines))
}

/// `civic-operator check`.
pub fn main(args: CheckArgs) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("civic-operator check: {}", CheckError::Runtime(e));
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let client = match &args.context {
            None => kube::Client::try_default().await,
            Some(context) => {
                let options = kube::config::KubeConfigOptions {
                    context: Some(context.clone()),
                    ..Default::default()
                };
                kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(kube::Error::InferKubeconfig)
                    .and_then(kube::Client::try_from)
            }
        }
        .map_err(CheckError::Client)?;
        run(&client, &args).await
    });
    match result {
        Ok((namespace, lines)) => {
            let text = match args.output {
                Output::Text => render_text(&namespace, &lines),
                Output::Json => render_json(&namespace, &lines),
            };
            print!("{text}");
            ExitCode::from(exit_status(&lines))
        }
        Err(e) => {
            eprintln!("civic-operator check: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests;
