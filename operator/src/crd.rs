//! The `CivicIntegration` custom resource (`mcp.civic.com/v1alpha1`).
//!
//! The Rust types are the source of truth: `civic-operator crd` prints the CRD generated from them
//! and `crds/` holds a copy that a test keeps in sync. Doc comments become `kubectl explain` text.
//! Rules the structural schema cannot say are CEL `x-kubernetes-validations` (Kubernetes 1.25+),
//! so `kubectl apply` refuses such a spec at once with the rule's message. [`crate::validation`]
//! checks the same rules and the few CEL cannot express (quantities within limits, label
//! selector syntax), and reports them in status: objects stored before a CRD upgrade are still
//! caught.

use civic_sidecar::contract;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Lower- or upper-case hexadecimal UUID, 8-4-4-4-12.
pub const UUID_PATTERN: &str =
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// `https://` anywhere, plain `http://` only on a loopback host (tests, local fakes).
pub const URL_PATTERN: &str =
    r"^(https://[^/?#@\s]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?)(/[^\s]*)?$";
/// RFC 1123 label: binding names end up in annotations as `<integration>/<binding>`.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// RFC 7230 header field name (token characters).
pub const HEADER_NAME_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";
/// Kubernetes requires projected service-account tokens to live at least ten minutes.
pub const MIN_SA_TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// The desired integration: the Civic Auth client credentials (by reference to a Secret in the
/// same namespace) and the profile bindings that say which pods get a sidecar, with which profile
/// and which identity.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "mcp.civic.com",
    version = "v1alpha1",
    kind = "CivicIntegration",
    namespaced,
    shortname = "civic",
    status = "CivicIntegrationStatus",
    derive = "PartialEq",
    doc = "Access to the Civic MCP hub for the pods of one namespace.",
    // JSON form: the structured form trips clippy's duplicated_attributes on repeated keys.
    printcolumn = r#"{"name":"Ready","type":"string","description":"Whether the integration is usable","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","description":"Why the integration is (not) ready","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Bindings","type":"string","description":"Names of the profile bindings","jsonPath":".spec.bindings[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CivicIntegrationSpec {
    /// Civic Auth client ID of the application the sidecars exchange tokens as.
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.trim().size() > 0", "message": "must not be blank"},
        {"rule": "!self.contains(':')",
         "message": "must not contain ':' (HTTP Basic client authentication splits id:secret at the first colon)"},
        {"rule": "!self.matches('[[:cntrl:]]')", "message": "must not contain control characters"}
    ]))]
    pub client_id: String,

    /// The Secret (in this namespace) holding the Civic Auth client secret. It is mounted only
    /// into the sidecar container, never into application containers.
    pub client_secret_ref: SecretKeyRef,

    /// Base URL of the Civic MCP hub. HTTPS; plain HTTP only on a loopback host.
    #[serde(default = "default_hub_url")]
    #[schemars(url, length(max = 2048), regex(pattern = URL_PATTERN))]
    pub hub_url: String,

    /// Civic Auth token endpoint (RFC 8693 token exchange). HTTPS; plain HTTP only on a loopback
    /// host.
    #[serde(default = "default_token_url")]
    #[schemars(url, length(max = 2048), regex(pattern = URL_PATTERN))]
    pub token_url: String,

    /// Profile bindings: which pods get a sidecar and with which profile and identity. A pod
    /// takes the first binding whose selector matches it (or, among those that match, the one
    /// its `mcp.civic.com/binding` annotation names). Names are unique within the list; at most
    /// 32 bindings (the bound keeps the CEL rules' cost within the apiserver's budget).
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub bindings: Vec<ProfileBinding>,

    /// Optional overrides of the chart's sidecar defaults for pods of this integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarOverrides>,
}

/// A key of a Secret in the integration's own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the CivicIntegration.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// One profile binding: a set of pods, the Civic profile they use, and whose identity they
/// exchange.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.subject.civicTokenSecretRef) || (!has(self.tokenTtlSeconds) && !has(self.scope) && !has(self.subjectTokenType))",
     "message": "tokenTtlSeconds, scope and subjectTokenType have no effect with subject.civicTokenSecretRef (no exchange happens)"},
    {"rule": "!has(self.subject.civicTokenSecretRef) || !has(self.profiles) || size(self.profiles) == 0",
     "message": "profiles need an exchange: a Civic token from subject.civicTokenSecretRef cannot be locked to several profiles"}
]))]
pub struct ProfileBinding {
    /// Name of the binding, unique within the integration (an RFC 1123 label). Pods its selector
    /// matches may pick it with the annotation `mcp.civic.com/binding: <integration>/<binding>`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,

    /// Pods of this namespace the binding applies to (they must also carry the label
    /// `mcp.civic.com/inject: enabled`). An empty selector selects every such pod.
    pub pod_selector: LabelSelector,

    /// Civic profile (toolkit) UUID, sent as `civic_profile` in the exchange and as the
    /// `x-civic-profile-id` header to the hub.
    #[schemars(regex(pattern = UUID_PATTERN))]
    pub profile_id: String,

    /// Named extra profiles for the same pods and identity: each is served by the sidecar on
    /// `/profiles/<name>/hub/mcp` with its own token locked to it, and its URL is given to app
    /// containers as `CIVIC_MCP_URL_<NAME>` (upper case, `-` as `_`). `profileId` stays the
    /// default, on `/hub/mcp`. Names are unique; at most 8. Needs an exchange (a service-account
    /// or request-header subject).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub profiles: Vec<NamedProfile>,

    /// Lock exchanged tokens to the profile (send `civic_profile` in the token exchange).
    /// Applies to every profile of the binding.
    #[serde(default = "default_true")]
    pub lock_profile: bool,

    /// Whose identity the sidecar exchanges for a Civic token: exactly one source.
    pub subject: SubjectSource,

    /// RFC 8693 `subject_token_type` of the subject token. Defaults to
    /// `urn:ietf:params:oauth:token-type:access_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.trim().size() > 0", "message": "must not be blank"}
    ]))]
    pub subject_token_type: Option<String>,

    /// Requested lifetime of exchanged tokens (`expires_in`), in seconds. Omitted: Civic Auth's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub token_ttl_seconds: Option<i64>,

    /// Requested `scope` (space-delimited). Omitted: no scope parameter is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.matches('[[:cntrl:]]')", "message": "must not contain control characters"}
    ]))]
    pub scope: Option<String>,
}

/// An extra profile of a binding, chosen by the workload through its URL.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedProfile {
    /// Name of the profile in the sidecar's URL (`/profiles/<name>/hub/mcp`) and in the app's
    /// `CIVIC_MCP_URL_<NAME>`: lowercase letters, digits and `-`, at most 32 characters;
    /// `default` is reserved for `profileId`.
    #[schemars(length(min = 1, max = 32), regex(pattern = DNS_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self != 'default'", "message": "'default' is reserved for the binding's profileId (served on /hub/mcp)"}
    ]))]
    pub name: String,
    /// Civic profile (toolkit) UUID the token for this name is locked to.
    #[schemars(regex(pattern = UUID_PATTERN))]
    pub profile_id: String,
}

/// Where the subject token for the exchange comes from. Exactly one of the fields is set.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SubjectSource {
    /// The pod's own identity: a projected service-account token with this audience.
    ServiceAccountToken(ServiceAccountTokenSubject),
    /// Per-user: the application forwards its user's token in this request header.
    RequestHeader(RequestHeaderSubject),
    /// A ready Civic access token from a Secret in this namespace; no exchange happens.
    CivicTokenSecretRef(SecretKeyRef),
}

/// A projected service-account token as the subject.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountTokenSubject {
    /// Audience of the projected token; Civic Auth must accept tokens for it.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.trim().size() > 0", "message": "must not be blank"}
    ]))]
    pub audience: String,
    /// Lifetime of the projected token in seconds (Kubernetes requires at least 600). The
    /// kubelet rotates it at 80% of its lifetime.
    #[serde(default = "default_sa_expiration")]
    #[schemars(range(min = 600, max = 4294967296i64))]
    pub expiration_seconds: i64,
}

/// A request header carrying the subject token.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestHeaderSubject {
    /// Header name, e.g. `Authorization` (a `Bearer ` prefix is removed).
    #[serde(default = "default_subject_header")]
    #[schemars(length(min = 1, max = 256), regex(pattern = HEADER_NAME_PATTERN))]
    #[schemars(transform = reserved_subject_header_rule)]
    pub name: String,
}

/// The CEL rule refusing the headers [`crate::validation`] reserves, built from its list so the
/// schema and the operator's check cannot drift apart.
fn reserved_subject_header_rule(schema: &mut schemars::Schema) {
    let reserved: Vec<String> = crate::validation::RESERVED_SUBJECT_HEADERS
        .iter()
        .map(|h| format!("'{h}'"))
        .collect();
    let rule = format!(
        "!(self.lowerAscii() in [{}]) && !self.lowerAscii().startsWith('mcp-')",
        reserved.join(", ")
    );
    schema.insert(
        "x-kubernetes-validations".to_owned(),
        serde_json::json!([{
            "rule": rule,
            "message": "cannot carry a subject token: hop-by-hop, framing, MCP and profile headers are reserved",
        }]),
    );
}

/// Overrides of the chart's sidecar defaults.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarOverrides {
    /// Sidecar container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.size() > 0 && !self.matches('\\\\s')", "message": "must be a non-empty image reference"}
    ]))]
    pub image: Option<String>,
    /// Sidecar container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Observed state, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CivicIntegrationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `SecretResolved` and `CredentialsValid`, each with a reason and a message.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Pod counts per binding.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub bindings: Vec<BindingStatus>,
}

/// Pod counts of one binding, and what Civic Auth must trust for its exchanges.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingStatus {
    /// Name of the binding.
    pub name: String,
    /// Non-terminated pods of the namespace the binding's selector matches.
    pub matched_pods: i32,
    /// Of those, the pods that carry this binding's sidecar.
    pub injected_pods: i32,
    /// The audience of the subject tokens this binding's pods present (service-account
    /// subjects): Civic Auth's token-exchange provider must accept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The `sub` the subject tokens carry, as a format: for service-account subjects
    /// `system:serviceaccount:<namespace>:<service account>`; for per-user subjects, whose tokens
    /// come from the application's identity provider, a note saying so. Absent for static tokens
    /// (no exchange). `civic-operator issuer` prints the issuer to trust with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl BindingStatus {
    /// A binding's status with no pods counted yet.
    pub fn of(namespace: &str, binding: &ProfileBinding) -> Self {
        let (audience, subject) = match &binding.subject {
            SubjectSource::ServiceAccountToken(sa) => (
                Some(sa.audience.clone()),
                Some(format!(
                    "system:serviceaccount:{namespace}:<service account of the pod>"
                )),
            ),
            SubjectSource::RequestHeader(h) => (
                None,
                Some(format!(
                    "the user's token from request header {}, issued by your identity provider",
                    h.name
                )),
            ),
            SubjectSource::CivicTokenSecretRef(_) => (None, None),
        };
        Self {
            name: binding.name.clone(),
            matched_pods: 0,
            injected_pods: 0,
            audience,
            subject,
        }
    }
}

impl CivicIntegrationStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

impl CivicIntegration {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status.as_ref()?.condition(type_)
    }
}

fn default_hub_url() -> String {
    contract::DEFAULT_HUB_URL.to_owned()
}
fn default_token_url() -> String {
    contract::DEFAULT_TOKEN_URL.to_owned()
}
fn default_true() -> bool {
    true
}
fn default_sa_expiration() -> i64 {
    3600
}
fn default_subject_header() -> String {
    "Authorization".to_owned()
}

/// The CRD as YAML, as `civic-operator crd` prints it and `crds/` stores it.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    serde_yaml_ng::to_string(&CivicIntegration::crd())
}
