//! `civic-operator issuer`: what to enter in Civic Auth's token-exchange provider so that it
//! trusts this cluster's service-account tokens, and what stands in the way.
//!
//! Everything is read from the cluster with the user's own kubeconfig: the OIDC discovery
//! document and the JWKS the apiserver serves, the CivicIntegrations, and the service accounts
//! of the pods their bindings select. The checks are pure functions, so they are tested without
//! a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::annotations::{self, INJECTED_ANNOTATION, parse_binding_ref};
use crate::crd::{CivicIntegration, SubjectSource};
use crate::inject::select;

/// Where the apiserver serves its OIDC discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the apiserver serves the service-account signing keys, whatever `jwks_uri` says.
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// The ClusterRole that grants reading both.
pub const DISCOVERY_ROLE: &str = "system:service-account-issuer-discovery";
/// Shown for bindings whose pods are not running yet.
pub const SERVICE_ACCOUNT_PLACEHOLDER: &str = "<service-account-name>";

/// The OIDC discovery document of the service-account issuer (the fields Civic Auth needs).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Discovery {
    pub issuer: String,
    /// Defaulted so that a document without it still yields the issuer (the policy needs only
    /// that); [`check_jwks`] reports the empty URI.
    #[serde(default)]
    pub jwks_uri: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub id_token_signing_alg_values_supported: Vec<String>,
}

/// Why the discovery document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The apiserver answered, with an error status (403: not allowed; 404: not served).
    #[error("the apiserver answered {code} to GET {DISCOVERY_PATH}: {message}")]
    Refused { code: u16, message: String },
    /// No usable answer (connection, TLS, a body that is not a discovery document).
    #[error("GET {DISCOVERY_PATH}: {0}")]
    Failed(#[source] kube::Error),
}

/// Reads the discovery document through the apiserver. Transport failures are retried
/// `retries` times with backoff (an apiserver that is still starting); an error status is not.
pub async fn discover(client: &kube::Client, retries: usize) -> Result<Discovery, DiscoveryError> {
    let mut delays = civic_sidecar::backoff::Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(4),
        jitter: civic_sidecar::backoff::Jitter::None,
    }
    .retries()
    .take(retries);
    loop {
        let request = http::Request::get(DISCOVERY_PATH)
            .body(Vec::new())
            .expect("a static request");
        match client.request::<Discovery>(request).await {
            Ok(d) => return Ok(d),
            Err(kube::Error::Api(s)) => {
                return Err(DiscoveryError::Refused {
                    code: s.code,
                    message: s.message,
                });
            }
            Err(e) => match delays.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(DiscoveryError::Failed(e)),
            },
        }
    }
}

/// One public key of the JWKS (never the key material itself: it is public, but long and
/// useless on a terminal).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct KeyInfo {
    #[serde(default)]
    pub kid: String,
    #[serde(default)]
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<KeyInfo>,
}

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Civic Auth cannot verify this cluster's tokens until it is fixed (exit status 1).
    Error,
    /// Worth checking; the issuer may still work.
    Warning,
}

/// A problem and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable, machine-readable name.
    pub code: &'static str,
    pub message: String,
}

impl Finding {
    fn error(code: &'static str, message: String) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message,
        }
    }
    fn warning(code: &'static str, message: String) -> Self {
        Self {
            severity: Severity::Warning,
            code,
            message,
        }
    }
}

const PUBLISH_ADVICE: &str = "publish the discovery document and the JWKS at a public https URL \
    (static hosting such as an object-storage bucket, as Azure Workload Identity documents for \
    self-managed clusters) and set kube-apiserver --service-account-issuer and \
    --service-account-jwks-uri to it, or use your cloud provider's issuer (EKS, GKE, AKS); see \
    docs/issuer.md";

/// Whether a host name or address cannot be reached from the internet: the cluster's service
/// names, loopback, private and link-local ranges, single-label names and reserved suffixes.
pub fn is_cluster_internal(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => is_internal_v4(*ip),
        Host::Ipv6(ip) => is_internal_v6(*ip),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            // A bare IP in a domain position (should not happen after URL parsing).
            if let Ok(ip) = name.parse::<IpAddr>() {
                return match ip {
                    IpAddr::V4(v4) => is_internal_v4(v4),
                    IpAddr::V6(v6) => is_internal_v6(v6),
                };
            }
            !name.contains('.')
                || [
                    "svc",
                    "cluster.local",
                    "local",
                    "localhost",
                    "internal",
                    "localdomain",
                    "home.arpa",
                ]
                .iter()
                .any(|suffix| {
                    name == *suffix
                        || name
                            .strip_suffix(suffix)
                            .is_some_and(|rest| rest.ends_with('.'))
                })
        }
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        // 100.64.0.0/10, shared address space: some clouds put services there.
        || (a == 100 && (64..128).contains(&b))
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_internal_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local, fe80::/10
}

/// What is wrong with the issuer URL itself. Civic Auth finds the keys through
/// `<issuer>/.well-known/openid-configuration`, so the issuer must be a public https URL.
pub fn check_issuer(issuer: &str) -> Vec<Finding> {
    let url = match Url::parse(issuer) {
        Ok(url) => url,
        Err(e) => {
            return vec![Finding::error(
                "issuer_not_url",
                format!(
                    "the issuer {issuer:?} is not a URL ({e}), so no one outside the cluster can \
                     discover its keys; {PUBLISH_ADVICE}"
                ),
            )];
        }
    };
    let mut findings = Vec::new();
    if url.scheme() != "https" {
        findings.push(Finding::error(
            "issuer_not_https",
            format!(
                "the issuer {issuer:?} is not an https URL; OIDC requires https and Civic Auth \
                 will not fetch keys over anything else; {PUBLISH_ADVICE}"
            ),
        ));
    }
    match url.host() {
        Some(host) if is_cluster_internal(&host) => findings.push(Finding::error(
            "issuer_cluster_internal",
            format!(
                "the issuer host {host} is cluster-internal: Civic Auth cannot reach \
                 {issuer}/.well-known/openid-configuration to find the keys; {PUBLISH_ADVICE}",
                issuer = issuer.trim_end_matches('/'),
            ),
        )),
        Some(_) => {}
        None => findings.push(Finding::error(
            "issuer_not_url",
            format!("the issuer {issuer:?} has no host; {PUBLISH_ADVICE}"),
        )),
    }
    findings
}

/// Whether `jwks_uri` is served where Civic Auth can fetch it. `apiserver_hosts` are the
/// addresses the apiserver itself answers on (the kubeconfig's server, the `kubernetes`
/// Service and its endpoints): a JWKS there needs anonymous access and a publicly trusted
/// certificate, which clusters do not give by default. `issuer_public`: the issuer passed
/// [`check_issuer`], so a public copy of the discovery document may name another JWKS URI
/// (EKS and GKE serve one; the apiserver's copy still names itself).
pub fn check_jwks(jwks_uri: &str, apiserver_hosts: &[String], issuer_public: bool) -> Vec<Finding> {
    let url = match Url::parse(jwks_uri) {
        Ok(url) => url,
        Err(e) => {
            return vec![Finding::error(
                "jwks_not_url",
                format!("the discovery document's jwks_uri {jwks_uri:?} is not a URL ({e})"),
            )];
        }
    };
    let host = url.host();
    let internal = host.as_ref().is_some_and(is_cluster_internal);
    let own = url.host_str().is_some_and(|h| {
        apiserver_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(h.trim_start_matches('[').trim_end_matches(']')))
    });
    if !internal && !own && url.scheme() == "https" {
        return Vec::new();
    }
    let why = if internal {
        "is cluster-internal"
    } else if own {
        "is the apiserver itself (anonymous access and a publicly trusted certificate would be \
         needed)"
    } else {
        "is not https"
    };
    let message = if issuer_public {
        format!(
            "the JWKS URI {jwks_uri} in the apiserver's discovery document {why}, so Civic Auth \
             cannot fetch the keys there. Managed clusters publish their own copy at the issuer: \
             check that <issuer>/.well-known/openid-configuration answers publicly and enter the \
             jwks_uri it names; otherwise {PUBLISH_ADVICE}"
        )
    } else {
        format!(
            "the JWKS URI {jwks_uri} {why}: the keys are not publicly served, so Civic Auth \
             cannot verify this cluster's tokens; publish them with the discovery document \
             (Azure Workload Identity documents this for self-managed clusters; see the issuer \
             error)"
        )
    };
    let finding = if issuer_public {
        Finding::warning("jwks_not_public", message)
    } else {
        Finding::error("jwks_not_public", message)
    };
    vec![finding]
}

/// The finding for a discovery document the apiserver refused to give.
pub fn discovery_refused(code: u16, message: &str) -> Finding {
    let what = match code {
        401 | 403 => format!(
            "your kubeconfig's user may not read {DISCOVERY_PATH} (HTTP {code}); run as a cluster \
             admin or bind the ClusterRole {DISCOVERY_ROLE} to your user (it is bound to all \
             service accounts by default, and the operator's own roles grant it)"
        ),
        404 => format!(
            "the apiserver does not serve {DISCOVERY_PATH} (HTTP 404): service-account issuer \
             discovery needs Kubernetes 1.21+ and --service-account-issuer set to an https URL; \
             {PUBLISH_ADVICE}"
        ),
        _ => format!("the apiserver answered HTTP {code} to {DISCOVERY_PATH}: {message}"),
    };
    Finding::error(
        "discovery_unreadable",
        format!("{what}; the issuer cannot be checked"),
    )
}

/// `system:serviceaccount:<namespace>:<name>`, the `sub` of a service-account token.
pub fn service_account_subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// What Civic Auth must trust for one binding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingTrust {
    pub namespace: String,
    pub integration: String,
    pub binding: String,
    #[serde(flatten)]
    pub trust: Trust,
}

/// By subject kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "subject", rename_all = "camelCase")]
pub enum Trust {
    /// Tokens of this cluster's issuer with this audience and these subjects.
    #[serde(rename_all = "camelCase")]
    ServiceAccountToken {
        audience: String,
        /// The `sub` claims of the running pods, or the pattern when none runs.
        subjects: Vec<String>,
        /// `subjects` is the pattern: no pod of the binding runs yet.
        pattern: bool,
    },
    /// Per-user: the application forwards its users' tokens; Civic Auth trusts their IdP.
    #[serde(rename_all = "camelCase")]
    RequestHeader { header: String },
    /// A ready Civic token; no exchange.
    #[serde(rename_all = "camelCase")]
    CivicTokenSecretRef { secret: String },
}

/// The binding (`<integration>/<binding>`) each pod uses: the one its sidecar was injected for,
/// or else the one the webhook would choose now (opted-in pods only, as the webhook sees only
/// those).
fn binding_of(pod: &Pod, integrations: &[CivicIntegration]) -> Option<(String, String)> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annots = meta.annotations.as_ref().unwrap_or(&empty);
    if let Some((i, b)) = annots
        .get(INJECTED_ANNOTATION)
        .and_then(|v| parse_binding_ref(v))
    {
        return Some((i.to_owned(), b.to_owned()));
    }
    if !annotations::opted_in(labels) {
        return None;
    }
    let chosen = select::select(labels, annots, meta.namespace.as_deref(), integrations).ok()??;
    Some((
        chosen.integration.metadata.name.clone().unwrap_or_default(),
        chosen.binding.name.clone(),
    ))
}

/// What Civic Auth must trust for every binding of `integrations`, given the live `pods` (any
/// namespace). `unlisted`: namespaces whose pods could not be listed (their bindings get the
/// pattern).
pub fn bindings(
    integrations: &[CivicIntegration],
    pods: &[Pod],
    unlisted: &BTreeSet<String>,
) -> Vec<BindingTrust> {
    // (namespace, integration, binding) → subjects
    let mut running: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for pod in pods {
        let Some(ns) = pod.metadata.namespace.clone() else {
            continue;
        };
        if let Some((integration, binding)) = binding_of(pod, integrations) {
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned());
            let subject = service_account_subject(&ns, &sa);
            running
                .entry((ns, integration, binding))
                .or_default()
                .insert(subject);
        }
    }
    let mut out = Vec::new();
    for ci in integrations {
        let namespace = ci.metadata.namespace.clone().unwrap_or_default();
        let integration = ci.metadata.name.clone().unwrap_or_default();
        for b in &ci.spec.bindings {
            let trust = match &b.subject {
                SubjectSource::ServiceAccountToken(sa) => {
                    let key = (namespace.clone(), integration.clone(), b.name.clone());
                    match running
                        .remove(&key)
                        .filter(|_| !unlisted.contains(&namespace))
                    {
                        Some(subjects) => Trust::ServiceAccountToken {
                            audience: sa.audience.clone(),
                            subjects: subjects.into_iter().collect(),
                            pattern: false,
                        },
                        None => Trust::ServiceAccountToken {
                            audience: sa.audience.clone(),
                            subjects: vec![service_account_subject(
                                &namespace,
                                SERVICE_ACCOUNT_PLACEHOLDER,
                            )],
                            pattern: true,
                        },
                    }
                }
                SubjectSource::RequestHeader(h) => Trust::RequestHeader {
                    header: h.name.clone(),
                },
                SubjectSource::CivicTokenSecretRef(s) => Trust::CivicTokenSecretRef {
                    secret: s.name.clone(),
                },
            };
            out.push(BindingTrust {
                namespace: namespace.clone(),
                integration: integration.clone(),
                binding: b.name.clone(),
                trust,
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.namespace, &a.integration, &a.binding).cmp(&(&b.namespace, &b.integration, &b.binding))
    });
    out
}

/// Everything the command found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Enter as the provider's issuer.
    pub issuer: Option<String>,
    /// `jwks_uri` of the apiserver's discovery document.
    pub jwks_uri: Option<String>,
    /// Where Civic Auth looks for the discovery document.
    pub discovery_url: Option<String>,
    /// The signing keys the apiserver serves (IDs only).
    pub keys: Vec<KeyInfo>,
    /// `None` when the CivicIntegrations could not be listed.
    pub bindings: Option<Vec<BindingTrust>>,
    pub warnings: Vec<Finding>,
    /// No finding of severity `error`.
    pub usable: bool,
}

impl Report {
    /// From what was read; the issuer checks are applied here.
    pub fn new(
        discovery: Result<Discovery, Finding>,
        keys: Vec<KeyInfo>,
        apiserver_hosts: &[String],
        bindings: Option<Vec<BindingTrust>>,
        mut notes: Vec<Finding>,
    ) -> Self {
        let mut warnings = Vec::new();
        let (issuer, jwks_uri) = match discovery {
            Ok(d) => {
                let issuer_findings = check_issuer(&d.issuer);
                let issuer_public = issuer_findings.is_empty();
                warnings.extend(issuer_findings);
                warnings.extend(check_jwks(&d.jwks_uri, apiserver_hosts, issuer_public));
                (Some(d.issuer), Some(d.jwks_uri))
            }
            Err(f) => {
                warnings.push(f);
                (None, None)
            }
        };
        warnings.append(&mut notes);
        warnings.sort_by_key(|f| f.severity);
        let usable = !warnings.iter().any(|f| f.severity == Severity::Error);
        Self {
            discovery_url: issuer
                .as_deref()
                .map(|i| format!("{}{DISCOVERY_PATH}", i.trim_end_matches('/'))),
            issuer,
            jwks_uri,
            keys,
            bindings,
            warnings,
            usable,
        }
    }

    /// The human-readable form.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let unknown = "(unknown: see below)";
        let _ = writeln!(s, "Civic Auth token-exchange provider (trusted issuer):");
        let _ = writeln!(
            s,
            "  Issuer URL:      {}",
            self.issuer.as_deref().unwrap_or(unknown)
        );
        let _ = writeln!(
            s,
            "  JWKS URI:        {}",
            self.jwks_uri.as_deref().unwrap_or(unknown)
        );
        if let Some(url) = &self.discovery_url {
            let _ = writeln!(s, "  Discovery:       {url}");
        }
        if !self.keys.is_empty() {
            let ids: Vec<String> = self
                .keys
                .iter()
                .map(|k| match &k.alg {
                    Some(alg) => format!("{} ({alg})", k.kid),
                    None => format!("{} ({})", k.kid, k.kty),
                })
                .collect();
            let _ = writeln!(s, "  Signing keys:    {}", ids.join(", "));
        }
        let all = self.bindings.as_deref().unwrap_or_default();
        let exchanged: Vec<&BindingTrust> = all
            .iter()
            .filter(|b| matches!(b.trust, Trust::ServiceAccountToken { .. }))
            .collect();
        let _ = writeln!(s);
        if self.bindings.is_none() {
            let _ = writeln!(s, "Bindings: unknown (see below).");
        } else if exchanged.is_empty() {
            let _ = writeln!(
                s,
                "No binding exchanges a service-account token (subject.serviceAccountToken)."
            );
        } else {
            let _ = writeln!(s, "Bindings exchanging service-account tokens:");
        }
        for b in exchanged {
            let Trust::ServiceAccountToken {
                audience,
                subjects,
                pattern,
            } = &b.trust
            else {
                continue;
            };
            let _ = writeln!(s, "  {}/{}/{}", b.namespace, b.integration, b.binding);
            let _ = writeln!(s, "    Audience:      {audience}");
            for (i, sub) in subjects.iter().enumerate() {
                let label = if i == 0 { "Subject (sub):" } else { "" };
                let _ = write!(s, "    {label:<15}{sub}");
                if *pattern {
                    let _ = write!(s, "  (no pod runs yet: the pattern)");
                }
                let _ = writeln!(s);
            }
        }
        if all
            .iter()
            .any(|b| !matches!(b.trust, Trust::ServiceAccountToken { .. }))
        {
            let _ = writeln!(s);
            let _ = writeln!(s, "Other bindings:");
        }
        for b in all {
            let name = format!("{}/{}/{}", b.namespace, b.integration, b.binding);
            match &b.trust {
                Trust::ServiceAccountToken { .. } => {}
                Trust::RequestHeader { header } => {
                    let _ = writeln!(
                        s,
                        "  {name}: per-user (subject from request header {header}): Civic Auth \
                         must trust the external identity provider that issues your users' \
                         tokens, not this cluster's issuer"
                    );
                }
                Trust::CivicTokenSecretRef { secret } => {
                    let _ = writeln!(
                        s,
                        "  {name}: static Civic token from Secret {secret}: no exchange happens, \
                         nothing to configure"
                    );
                }
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "Warnings:");
            for f in &self.warnings {
                let level = match f.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                let _ = writeln!(s, "  {level} [{}]: {}", f.code, f.message);
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{}",
            if self.usable {
                "The issuer can work for Civic Auth."
            } else {
                "The issuer cannot work for Civic Auth as it is: fix the errors above."
            }
        );
        s
    }
}

/// `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `civic-operator issuer`.
#[derive(Debug, Args)]
pub struct IssuerArgs {
    /// Only the CivicIntegrations of this namespace (default: every namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Why the command could not ask the cluster at all.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("kubeconfig: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot reach the apiserver: {0}")]
    Unreachable(#[source] DiscoveryError),
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Reads the cluster and builds the report.
pub async fn report(
    client: &kube::Client,
    server: &http::Uri,
    namespace: Option<&str>,
) -> Result<Report, IssuerError> {
    let discovery = match discover(client, 2).await {
        Ok(d) => Ok(d),
        Err(DiscoveryError::Refused { code, message }) => Err(discovery_refused(code, &message)),
        Err(e @ DiscoveryError::Failed(_)) => return Err(IssuerError::Unreachable(e)),
    };
    let mut notes = Vec::new();
    let mut keys = Vec::new();
    if discovery.is_ok() {
        match read_jwks(client).await {
            Ok(k) => keys = k,
            Err(e) => notes.push(Finding::warning(
                "jwks_unreadable",
                format!(
                    "reading {JWKS_PATH} through the apiserver failed ({e}); the keys could not \
                     be listed (bind {DISCOVERY_ROLE} to your user to read them)"
                ),
            )),
        }
    }
    let apiserver_hosts = apiserver_hosts(client, server).await;

    let integrations: Api<CivicIntegration> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let integrations = match integrations.list(&ListParams::default()).await {
        Ok(list) => Some(list.items),
        Err(e) => {
            let hint = match &e {
                kube::Error::Api(s) if s.code == 404 => {
                    "is the CivicIntegration CRD installed?".to_owned()
                }
                kube::Error::Api(s) if s.code == 403 && namespace.is_none() => {
                    "pass --namespace to list one namespace only".to_owned()
                }
                _ => "check your kubeconfig's permissions".to_owned(),
            };
            notes.push(Finding::warning(
                "integrations_unreadable",
                format!(
                    "listing CivicIntegrations failed ({}); {hint}; bindings are not shown",
                    api_error(&e)
                ),
            ));
            None
        }
    };

    // Pods only where a binding exchanges a service-account token.
    let namespaces: BTreeSet<String> = integrations
        .iter()
        .flatten()
        .filter(|ci| {
            ci.spec
                .bindings
                .iter()
                .any(|b| matches!(b.subject, SubjectSource::ServiceAccountToken(_)))
        })
        .filter_map(|ci| ci.metadata.namespace.clone())
        .collect();
    let mut pods = Vec::new();
    let mut unlisted = BTreeSet::new();
    let params = ListParams::default()
        .labels(&annotations::opted_in_selector())
        .fields("status.phase!=Succeeded,status.phase!=Failed");
    for ns in namespaces {
        match Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&params)
            .await
        {
            Ok(list) => pods.extend(list.items),
            Err(e) => {
                notes.push(Finding::warning(
                    "pods_unreadable",
                    format!(
                        "listing pods in namespace {ns} failed ({}); its bindings show the \
                         subject pattern instead of the running pods' service accounts",
                        api_error(&e)
                    ),
                ));
                unlisted.insert(ns);
            }
        }
    }
    let bindings = integrations.map(|cis| bindings(&cis, &pods, &unlisted));
    Ok(Report::new(
        discovery,
        keys,
        &apiserver_hosts,
        bindings,
        notes,
    ))
}

/// An apiserver error as its status line and message (kube's `Display` prints the whole
/// `Status` structure).
fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("HTTP {}: {}", s.code, s.message),
        e => e.to_string(),
    }
}

async fn read_jwks(client: &kube::Client) -> Result<Vec<KeyInfo>, String> {
    let request = http::Request::get(JWKS_PATH)
        .body(Vec::new())
        .expect("a static request");
    let text = client
        .request_text(request)
        .await
        .map_err(|e| api_error(&e))?;
    let jwks: Jwks = serde_json::from_str(&text).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(jwks.keys)
}

/// The addresses the apiserver answers on, as far as they can be read: the kubeconfig's server,
/// the `kubernetes` Service's cluster IP and its endpoints (the advertised addresses that the
/// apiserver puts into `jwks_uri` by default).
async fn apiserver_hosts(client: &kube::Client, server: &http::Uri) -> Vec<String> {
    let mut hosts = Vec::new();
    if let Some(h) = server.host() {
        hosts.push(h.trim_start_matches('[').trim_end_matches(']').to_owned());
    }
    if let Ok(svc) = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
    {
        hosts.extend(svc.spec.and_then(|s| s.cluster_ips).unwrap_or_default());
    }
    let slices = ListParams::default().labels("kubernetes.io/service-name=kubernetes");
    if let Ok(list) = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .list(&slices)
        .await
    {
        for slice in list.items {
            hosts.extend(slice.endpoints.into_iter().flat_map(|e| e.addresses));
        }
    }
    hosts
}

/// Prints the report. Exit status 0 when the issuer can work, 1 when it cannot, 2 when the
/// cluster could not be asked (clap exits 2 on usage errors too).
pub fn main(args: IssuerArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&IssuerError::Runtime(e)),
    };
    let result = runtime.block_on(async {
        let config = kube::Config::infer().await?;
        let server = config.cluster_url.clone();
        let client = kube::Client::try_from(config).map_err(IssuerError::Client)?;
        report(&client, &server, args.namespace.as_deref()).await
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    match args.output {
        Output::Text => print!("{}", report.text()),
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("civic-operator issuer: {e}");
                return ExitCode::from(2);
            }
        },
    }
    if report.usable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(e: &IssuerError) -> ExitCode {
    eprintln!("civic-operator issuer: {e}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests;
