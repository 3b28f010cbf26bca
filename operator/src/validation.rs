//! Checks the CRD schema cannot express (the 1.20 apiserver has no CEL), and the operator's
//! [`Policy`]. A spec that fails them is reported as `Ready=False, reason=InvalidSpec` and waits
//! for the next change; the webhook denies pods of such an integration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;
use url::{Host, Url};

use crate::crd::{
    CivicIntegrationSpec, MIN_SA_TOKEN_EXPIRATION_SECONDS, ProfileBinding, SecretKeyRef,
    SubjectSource,
};
use crate::policy::Policy;

/// Kubernetes caps projected service-account token lifetimes at 2^32 seconds.
const MAX_SA_TOKEN_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Headers a subject token can never arrive in: hop-by-hop, framing, and headers the sidecar
/// itself sets or must forward unchanged.
pub(crate) const RESERVED_SUBJECT_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "content-encoding",
    "accept",
    "x-civic-profile-id",
];

/// One problem, with the field path it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// JSON-ish path, e.g. `spec.bindings[support].subject`.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

/// Every problem found in a spec (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSpec(pub Vec<Problem>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidSpec {}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Validates a spec under `policy`; `Err` lists every problem, in field order.
pub fn validate(spec: &CivicIntegrationSpec, policy: &Policy) -> Result<(), InvalidSpec> {
    let mut p = Problems::default();

    if spec.client_id.trim().is_empty() {
        p.push("spec.clientId", "must not be blank");
    } else if spec.client_id.contains(':') {
        // HTTP Basic client authentication splits `id:secret` at the first colon.
        p.push("spec.clientId", "must not contain ':'");
    } else if spec.client_id.chars().any(char::is_control) {
        p.push("spec.clientId", "must not contain control characters");
    }
    secret_ref(&mut p, "spec.clientSecretRef", &spec.client_secret_ref);
    if let Some(url) = endpoint_url(&mut p, "spec.hubUrl", &spec.hub_url)
        && let Err(e) = policy.hub_url(&url)
    {
        p.push("spec.hubUrl", e);
    }
    if let Some(url) = endpoint_url(&mut p, "spec.tokenUrl", &spec.token_url)
        && let Err(e) = policy.token_url(&url)
    {
        p.push("spec.tokenUrl", e);
    }

    let mut names = BTreeSet::new();
    for (i, b) in spec.bindings.iter().enumerate() {
        let path = if b.name.is_empty() {
            format!("spec.bindings[{i}]")
        } else {
            format!("spec.bindings[{}]", b.name)
        };
        if !names.insert(b.name.as_str()) {
            p.push(&path, "binding names must be unique");
        }
        binding(&mut p, &path, b, policy);
    }
    if let Some(image) = spec.sidecar.as_ref().and_then(|s| s.image.as_deref()) {
        if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
            p.push("spec.sidecar.image", "must be a non-empty image reference");
        } else if let Err(e) = policy.sidecar_image(image) {
            p.push("spec.sidecar.image", e);
        }
    }
    if let Some(r) = spec.sidecar.as_ref().and_then(|s| s.resources.as_ref()) {
        sidecar_resources(&mut p, r);
    }

    if p.0.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(p.0))
    }
}

fn binding(p: &mut Problems, path: &str, b: &ProfileBinding, policy: &Policy) {
    if !is_dns_label(&b.name) {
        p.push(
            format!("{path}.name"),
            "must be a lowercase RFC 1123 label (a-z, 0-9, '-', at most 63 characters)",
        );
    }
    if !is_uuid(&b.profile_id) {
        p.push(format!("{path}.profileId"), "must be a UUID");
    }
    named_profiles(p, path, b);
    label_selector(p, &format!("{path}.podSelector"), &b.pod_selector);
    if let Some(ttl) = b.token_ttl_seconds
        && ttl < 1
    {
        p.push(format!("{path}.tokenTtlSeconds"), "must be at least 1");
    }
    if let Some(t) = &b.subject_token_type
        && t.trim().is_empty()
    {
        p.push(format!("{path}.subjectTokenType"), "must not be blank");
    }
    if let Some(scope) = &b.scope
        && scope.chars().any(|c| c.is_control())
    {
        p.push(
            format!("{path}.scope"),
            "must not contain control characters",
        );
    }
    let subject = format!("{path}.subject");
    match &b.subject {
        SubjectSource::ServiceAccountToken(sa) => {
            if sa.audience.trim().is_empty() {
                p.push(
                    format!("{subject}.serviceAccountToken.audience"),
                    "must not be blank",
                );
            } else if let Err(e) = policy.audience(&sa.audience) {
                p.push(format!("{subject}.serviceAccountToken.audience"), e);
            }
            if !(MIN_SA_TOKEN_EXPIRATION_SECONDS..=MAX_SA_TOKEN_EXPIRATION_SECONDS)
                .contains(&sa.expiration_seconds)
            {
                p.push(
                    format!("{subject}.serviceAccountToken.expirationSeconds"),
                    format!(
                        "must be between {MIN_SA_TOKEN_EXPIRATION_SECONDS} and \
                         {MAX_SA_TOKEN_EXPIRATION_SECONDS}"
                    ),
                );
            }
        }
        SubjectSource::RequestHeader(h) => {
            let lower = h.name.to_ascii_lowercase();
            if h.name.is_empty() || !h.name.bytes().all(is_header_token_byte) {
                p.push(
                    format!("{subject}.requestHeader.name"),
                    "must be an HTTP header name",
                );
            } else if RESERVED_SUBJECT_HEADERS.contains(&lower.as_str())
                || lower.starts_with("mcp-")
            {
                p.push(
                    format!("{subject}.requestHeader.name"),
                    format!("{} cannot carry a subject token", h.name),
                );
            }
        }
        SubjectSource::CivicTokenSecretRef(r) => {
            secret_ref(p, &format!("{subject}.civicTokenSecretRef"), r);
            // A static Civic token is used as-is: these exchange parameters would be ignored.
            for (set, field) in [
                (b.token_ttl_seconds.is_some(), "tokenTtlSeconds"),
                (b.scope.is_some(), "scope"),
                (b.subject_token_type.is_some(), "subjectTokenType"),
            ] {
                if set {
                    p.push(
                        format!("{path}.{field}"),
                        "has no effect with subject.civicTokenSecretRef (no exchange happens)",
                    );
                }
            }
        }
    }
}

/// The sidecar's own rules for names (it parses what the operator renders), plus uniqueness,
/// the bound and the need for an exchange.
fn named_profiles(p: &mut Problems, path: &str, b: &ProfileBinding) {
    use civic_sidecar::profiles::{MAX_NAMED_PROFILES, name_problem};
    if b.profiles.len() > MAX_NAMED_PROFILES {
        p.push(
            format!("{path}.profiles"),
            format!("at most {MAX_NAMED_PROFILES} named profiles"),
        );
    }
    if !b.profiles.is_empty() && matches!(b.subject, SubjectSource::CivicTokenSecretRef(_)) {
        p.push(
            format!("{path}.profiles"),
            "need an exchange: a Civic token from subject.civicTokenSecretRef cannot be locked \
             to several profiles",
        );
    }
    let mut names = BTreeSet::new();
    for (i, named) in b.profiles.iter().enumerate() {
        let at = format!("{path}.profiles[{i}]");
        if let Some(problem) = name_problem(&named.name) {
            p.push(format!("{at}.name"), problem);
        } else if !names.insert(named.name.as_str()) {
            p.push(format!("{at}.name"), "profile names must be unique");
        }
        if !is_uuid(&named.profile_id) {
            p.push(format!("{at}.profileId"), "must be a UUID");
        }
    }
}

fn secret_ref(p: &mut Problems, path: &str, r: &SecretKeyRef) {
    if !is_dns_subdomain(&r.name) {
        p.push(format!("{path}.name"), "must be a valid Secret name");
    }
    let key_ok = !r.key.is_empty()
        && r.key.len() <= 253
        && r.key != "."
        && r.key != ".."
        && r.key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !key_ok {
        p.push(
            format!("{path}.key"),
            "must be a valid Secret key (a-z, A-Z, 0-9, '-', '_', '.')",
        );
    }
}

/// The schema takes any string or number for a quantity (`x-kubernetes-int-or-string`); a bad
/// one would only surface when the apiserver refuses every injected pod.
fn sidecar_resources(p: &mut Problems, r: &ResourceRequirements) {
    let mut values = [BTreeMap::new(), BTreeMap::new()];
    for (i, (kind, map)) in [("limits", &r.limits), ("requests", &r.requests)]
        .into_iter()
        .enumerate()
    {
        for (name, q) in map.iter().flatten() {
            let path = format!("spec.sidecar.resources.{kind}.{name}");
            match quantity_value(&q.0) {
                None => p.push(
                    path,
                    format!("{:?} is not a quantity (e.g. 100m, 64Mi, 1.5)", q.0),
                ),
                Some(v) if v < 0.0 => p.push(path, "must not be negative"),
                Some(v) => {
                    values[i].insert(name.as_str(), v);
                }
            }
        }
    }
    let [limits, requests] = values;
    for (name, request) in &requests {
        if limits.get(name).is_some_and(|limit| request > limit) {
            p.push(
                format!("spec.sidecar.resources.requests.{name}"),
                "must not exceed the limit",
            );
        }
    }
}

/// The value of a Kubernetes quantity (`<sign><number><suffix>`: binary `Ki`…`Ei`, decimal
/// `m`, `k`…`E`, or an exponent `e<int>`), or `None` if it is not one.
fn quantity_value(s: &str) -> Option<f64> {
    let s = s.trim();
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1.0, &s[1..]),
        b'-' => (-1.0, &s[1..]),
        _ => (1.0, s),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let binary = |e: i32| 1024f64.powi(e);
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exp.parse().ok()?)
        }
    };
    Some(sign * n * scale)
}

/// HTTPS anywhere; plain HTTP only to a loopback host (tests and local fakes).
/// The URL when it parses (policy checks follow even if another rule failed).
fn endpoint_url(p: &mut Problems, path: &str, raw: &str) -> Option<Url> {
    let url = match Url::parse(raw) {
        Ok(u) => u,
        Err(e) => {
            p.push(path, format!("is not a URL: {e}"));
            return None;
        }
    };
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => p.push(path, "must use https (http only for a loopback host)"),
        other => p.push(path, format!("unsupported scheme {other:?}; use https")),
    }
    if url.host().is_none() {
        p.push(path, "must have a host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        p.push(path, "must not carry credentials");
    }
    if url.fragment().is_some() {
        p.push(path, "must not have a fragment");
    }
    Some(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn label_selector(p: &mut Problems, path: &str, sel: &LabelSelector) {
    for (k, v) in sel.match_labels.iter().flatten() {
        if !is_label_key(k) {
            p.push(
                format!("{path}.matchLabels"),
                format!("invalid label key {k:?}"),
            );
        }
        if !is_label_value(v) {
            p.push(
                format!("{path}.matchLabels"),
                format!("invalid label value {v:?} for {k:?}"),
            );
        }
    }
    for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
        let rp = format!("{path}.matchExpressions[{i}]");
        if !is_label_key(&r.key) {
            p.push(&rp, format!("invalid label key {:?}", r.key));
        }
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => p.push(
                &rp,
                format!("operator {} needs at least one value", r.operator),
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                p.push(&rp, format!("operator {} takes no values", r.operator))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => p.push(
                &rp,
                format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
            ),
        }
        for v in values {
            if !is_label_value(v) {
                p.push(&rp, format!("invalid label value {v:?}"));
            }
        }
    }
}

/// The selector as kube's matcher, when it is valid.
pub fn selector(sel: &LabelSelector) -> Option<Selector> {
    let mut p = Problems::default();
    label_selector(&mut p, "", sel);
    if !p.0.is_empty() {
        return None;
    }
    Selector::try_from(sel.clone()).ok()
}

fn is_header_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&c)
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `[prefix/]name`: prefix a DNS subdomain, name ≤ 63 alphanumerics with `-_.` inside.
fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    v.len() <= 63
        && (b.is_empty()
            || (b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RequestHeaderSubject, ServiceAccountTokenSubject, SidecarOverrides};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn binding(name: &str) -> ProfileBinding {
        crate::testing::binding(name, "agent")
    }

    fn spec() -> CivicIntegrationSpec {
        CivicIntegrationSpec {
            client_id: "client-123".into(),
            client_secret_ref: SecretKeyRef {
                name: "civic-credentials".into(),
                key: "client-secret".into(),
            },
            hub_url: "https://app.civic.com/hub/mcp".into(),
            token_url: "https://auth.civic.com/oauth/token".into(),
            bindings: vec![binding("support")],
            sidecar: None,
        }
    }

    fn paths(spec: &CivicIntegrationSpec) -> Vec<String> {
        match validate(spec, &Policy::default()) {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|p| p.path).collect(),
        }
    }

    #[test]
    fn a_good_spec_passes() {
        assert_eq!(validate(&spec(), &Policy::default()), Ok(()));
    }

    #[test]
    fn loopback_http_is_allowed_and_other_http_is_not() {
        let mut s = spec();
        s.token_url = "http://127.0.0.1:4567/oauth/token".into();
        s.hub_url = "http://[::1]:80/hub/mcp".into();
        let loopback = crate::testing::loopback_policy();
        assert_eq!(validate(&s, &loopback), Ok(()));
        s.hub_url = "http://localhost/hub/mcp".into();
        assert_eq!(validate(&s, &loopback), Ok(()));
        let e = validate(&s, &Policy::default()).unwrap_err().to_string();
        assert!(
            e.contains("spec.hubUrl: hub host \"localhost\" is not allowed"),
            "{e}"
        );
        assert!(
            e.contains("spec.tokenUrl: token host \"127.0.0.1\" is not allowed"),
            "{e}"
        );
        s.hub_url = "https://app.civic.com/hub/mcp".into();
        s.token_url = "http://auth.civic.com/oauth/token".into();
        assert_eq!(paths(&s), ["spec.tokenUrl"]);
        s.token_url = "ftp://auth.civic.com/x".into();
        assert_eq!(paths(&s), ["spec.tokenUrl"]);
        s.token_url = "https://user:pw@auth.civic.com/oauth/token".into();
        assert_eq!(paths(&s), ["spec.tokenUrl"]);
        s.token_url = "not a url".into();
        assert_eq!(paths(&s), ["spec.tokenUrl"]);
    }

    #[test]
    fn client_id_must_be_usable_in_basic_auth() {
        let mut s = spec();
        s.client_id = "  ".into();
        assert_eq!(paths(&s), ["spec.clientId"]);
        s.client_id = "a:b".into();
        assert_eq!(paths(&s), ["spec.clientId"]);
    }

    #[test]
    fn duplicate_binding_names_are_reported() {
        let mut s = spec();
        s.bindings.push(binding("support"));
        let e = validate(&s, &Policy::default()).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.to_string().contains("unique"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut s = spec();
        let mut b = binding("Bad_Name");
        b.profile_id = "not-a-uuid".into();
        b.pod_selector.match_expressions = Some(vec![
            LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: None,
            },
            LabelSelectorRequirement {
                key: "x".into(),
                operator: "Near".into(),
                values: None,
            },
        ]);
        b.subject = SubjectSource::ServiceAccountToken(ServiceAccountTokenSubject {
            audience: "civic".into(),
            expiration_seconds: 599,
        });
        s.bindings = vec![b];
        s.client_secret_ref.key = "bad/key".into();
        assert_eq!(
            paths(&s),
            [
                "spec.clientSecretRef.key",
                "spec.bindings[Bad_Name].name",
                "spec.bindings[Bad_Name].profileId",
                "spec.bindings[Bad_Name].podSelector.matchExpressions[0]",
                "spec.bindings[Bad_Name].podSelector.matchExpressions[1]",
                "spec.bindings[Bad_Name].subject.serviceAccountToken.expirationSeconds",
            ]
        );
        let msg = validate(&s, &Policy::default()).unwrap_err().to_string();
        assert!(msg.contains("needs at least one value"), "{msg}");
        assert!(msg.contains("between 600"), "{msg}");
    }

    #[test]
    fn reserved_headers_cannot_carry_the_subject() {
        let mut s = spec();
        for (name, ok) in [
            ("Authorization", true),
            ("X-User-Token", true),
            ("Host", false),
            ("Mcp-Session-Id", false),
            ("x-civic-profile-id", false),
            ("bad header", false),
        ] {
            s.bindings[0].subject =
                SubjectSource::RequestHeader(RequestHeaderSubject { name: name.into() });
            assert_eq!(validate(&s, &Policy::default()).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn static_tokens_reject_exchange_parameters() {
        let mut s = spec();
        s.bindings[0].subject = SubjectSource::CivicTokenSecretRef(SecretKeyRef {
            name: "civic-token".into(),
            key: "token".into(),
        });
        assert_eq!(validate(&s, &Policy::default()), Ok(()));
        s.bindings[0].scope = Some("mcp".into());
        s.bindings[0].token_ttl_seconds = Some(600);
        assert_eq!(
            paths(&s),
            [
                "spec.bindings[support].tokenTtlSeconds",
                "spec.bindings[support].scope"
            ]
        );
    }

    #[test]
    fn named_profiles_are_checked_like_the_sidecar_checks_them() {
        use crate::crd::NamedProfile;
        let named = |name: &str, id: &str| NamedProfile {
            name: name.into(),
            profile_id: id.into(),
        };
        let uuid = "5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11";
        let mut s = spec();
        s.bindings[0].profiles = vec![named("support", uuid), named("billing-tools", uuid)];
        assert_eq!(validate(&s, &Policy::default()), Ok(()));
        s.bindings[0].profiles = vec![
            named("default", uuid),
            named("Sales", uuid),
            named("ok", "nope"),
            named("ok", uuid),
        ];
        assert_eq!(
            paths(&s),
            [
                "spec.bindings[support].profiles[0].name",
                "spec.bindings[support].profiles[1].name",
                "spec.bindings[support].profiles[2].profileId",
                "spec.bindings[support].profiles[3].name",
            ]
        );
        let msg = validate(&s, &Policy::default()).unwrap_err().to_string();
        assert!(msg.contains("reserved") && msg.contains("unique"), "{msg}");
        s.bindings[0].profiles = (0..9).map(|i| named(&format!("p{i}"), uuid)).collect();
        assert_eq!(paths(&s), ["spec.bindings[support].profiles"]);
        s.bindings[0].profiles = vec![named("support", uuid)];
        s.bindings[0].subject = SubjectSource::CivicTokenSecretRef(SecretKeyRef {
            name: "civic-token".into(),
            key: "token".into(),
        });
        assert_eq!(paths(&s), ["spec.bindings[support].profiles"]);
    }

    #[test]
    fn sidecar_image_must_not_be_blank() {
        let mut s = spec();
        s.sidecar = Some(SidecarOverrides {
            image: Some(" ".into()),
            resources: None,
        });
        assert_eq!(paths(&s), ["spec.sidecar.image"]);
    }

    #[test]
    fn sidecar_resources_must_be_quantities_within_limits() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let with = |limits: &[(&str, &str)], requests: &[(&str, &str)]| {
            let map = |kv: &[(&str, &str)]| {
                Some(
                    kv.iter()
                        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                        .collect(),
                )
            };
            let mut s = spec();
            s.sidecar = Some(SidecarOverrides {
                image: None,
                resources: Some(ResourceRequirements {
                    limits: map(limits),
                    requests: map(requests),
                    ..Default::default()
                }),
            });
            paths(&s)
        };
        let none: Vec<String> = vec![];
        assert_eq!(
            with(
                &[("cpu", "500m"), ("memory", "128Mi")],
                &[("cpu", "0.1"), ("memory", "64Mi")]
            ),
            none
        );
        assert_eq!(with(&[("cpu", "1e3"), ("memory", "1G")], &[]), none);
        assert_eq!(
            with(&[("cpu", "2"), ("memory", "1E")], &[("cpu", ".5")]),
            none
        );
        assert_eq!(
            with(&[("cpu", "lots")], &[]),
            ["spec.sidecar.resources.limits.cpu"]
        );
        for bad in ["", "1.2.3", "12x", "Mi", "1e", "1e+", "--1", "1 Mi", "."] {
            assert_eq!(
                with(&[], &[("memory", bad)]),
                ["spec.sidecar.resources.requests.memory"],
                "{bad:?}"
            );
        }
        assert_eq!(
            with(&[], &[("memory", "-64Mi")]),
            ["spec.sidecar.resources.requests.memory"]
        );
        assert_eq!(
            with(&[("memory", "64Mi")], &[("memory", "68M")]),
            ["spec.sidecar.resources.requests.memory"],
            "68 MB is more than 64 MiB"
        );
        assert_eq!(with(&[("memory", "64Mi")], &[("memory", "67M")]), none);
        assert_eq!(with(&[("memory", "64Mi")], &[("memory", "67108864")]), none);
    }

    #[test]
    fn selector_matches_only_when_valid() {
        let b = binding("a");
        let sel = selector(&b.pod_selector).expect("valid");
        use kube::core::SelectorExt;
        assert!(sel.matches(&[("app".to_string(), "agent".to_string())].into()));
        assert!(!sel.matches(&[("app".to_string(), "other".to_string())].into()));
        let bad = LabelSelector {
            match_labels: Some([("bad key!".to_string(), "v".to_string())].into()),
            match_expressions: None,
        };
        assert!(selector(&bad).is_none());
    }

    #[test]
    fn label_syntax() {
        assert!(is_label_key("app"));
        assert!(is_label_key("mcp.civic.com/inject"));
        assert!(!is_label_key("/inject"));
        assert!(!is_label_key("Bad_Prefix/x"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
        assert!(!is_label_value(&"a".repeat(64)));
    }

    #[test]
    fn the_crd_cel_rule_reserves_the_same_headers() {
        let crd = crate::crd::crd_yaml().expect("crd");
        let rule = crd
            .lines()
            .find(|l| l.contains("lowerAscii() in ["))
            .expect("the requestHeader CEL rule");
        let list = &rule[rule.find('[').unwrap() + 1..rule.find(']').unwrap()];
        let in_cel: Vec<String> = list
            .split(',')
            .map(|h| h.trim().trim_matches('\'').to_owned())
            .collect();
        assert_eq!(
            in_cel, RESERVED_SUBJECT_HEADERS,
            "the CRD rule lists exactly the reserved headers"
        );
    }
}
