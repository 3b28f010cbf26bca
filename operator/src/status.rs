//! The desired status, as a pure function of what one reconcile observed. Pure so it can be tested
//! without an apiserver, and deterministic so a no-op reconcile compares equal and writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::conditions::{self, Check, Status, reason};
use crate::crd::{BindingStatus, CivicIntegrationStatus, SecretKeyRef};
use crate::validation::InvalidSpec;

/// Longest server-provided text (an OAuth `error_description`) copied into a message.
const MAX_REMOTE_TEXT: usize = 200;

/// What the Secret stage found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretOutcome {
    Resolved,
    NotFound,
    KeyNotFound,
    KeyEmpty,
    KeyNotText,
    /// The namespace is not among these, the only ones whose Secrets the operator may read.
    NamespaceNotServed(Vec<String>),
    /// The apiserver refused the read (403).
    Forbidden,
}

/// What the credential probe concluded. A transient failure is not a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialOutcome {
    Accepted,
    /// Civic Auth refused the client: `code` is the OAuth error code.
    Rejected {
        code: String,
        description: Option<String>,
    },
    /// No verdict: the token endpoint could not be asked (network, timeout, 5xx, 429).
    ProbeFailed {
        category: &'static str,
    },
}

/// Results of the reconcile stages; a later stage is `None` when it did not run.
#[derive(Clone, Debug)]
pub struct Observed {
    pub spec: Result<(), InvalidSpec>,
    pub secret: Option<SecretOutcome>,
    pub credentials: Option<CredentialOutcome>,
    pub bindings: Vec<BindingStatus>,
}

impl SecretOutcome {
    pub fn check(&self, r: &SecretKeyRef, namespace: &str) -> Check {
        let (name, key) = (&r.name, &r.key);
        match self {
            SecretOutcome::Resolved => Check::new(
                Status::True,
                reason::SECRET_FOUND,
                format!("key {key:?} of Secret {name:?} is set"),
            ),
            SecretOutcome::NotFound => Check::new(
                Status::False,
                reason::SECRET_NOT_FOUND,
                format!("Secret {name:?} not found in namespace {namespace:?}"),
            ),
            SecretOutcome::KeyNotFound => Check::new(
                Status::False,
                reason::KEY_NOT_FOUND,
                format!("Secret {name:?} has no key {key:?}"),
            ),
            SecretOutcome::KeyEmpty => Check::new(
                Status::False,
                reason::KEY_EMPTY,
                format!("key {key:?} of Secret {name:?} is empty"),
            ),
            SecretOutcome::KeyNotText => Check::new(
                Status::False,
                reason::KEY_NOT_TEXT,
                format!("key {key:?} of Secret {name:?} is not UTF-8 text"),
            ),
            SecretOutcome::NamespaceNotServed(served) => Check::new(
                Status::False,
                reason::SECRET_FORBIDDEN,
                format!(
                    "the operator reads Secrets only in namespaces {served:?} (chart value \
                     controller.secretNamespaces), not in {namespace:?}"
                ),
            ),
            SecretOutcome::Forbidden => Check::new(
                Status::False,
                reason::SECRET_FORBIDDEN,
                format!(
                    "the operator may not read Secret {name:?} in namespace {namespace:?} \
                     (403 Forbidden): its RBAC does not grant it"
                ),
            ),
        }
    }
}

impl CredentialOutcome {
    pub fn check(&self, token_url: &str) -> Check {
        match self {
            CredentialOutcome::Accepted => Check::new(
                Status::True,
                reason::CREDENTIALS_ACCEPTED,
                format!("{token_url} authenticated the client"),
            ),
            CredentialOutcome::Rejected { code, description } => {
                let reason = if code == "invalid_client" {
                    reason::INVALID_CLIENT
                } else {
                    reason::CREDENTIALS_REJECTED
                };
                let mut message = format!(
                    "{token_url} rejected the client credentials: {}",
                    sanitize(code)
                );
                if let Some(d) = description
                    .as_deref()
                    .map(sanitize)
                    .filter(|d| !d.is_empty())
                {
                    message.push_str(" (");
                    message.push_str(&d);
                    message.push(')');
                }
                Check::new(Status::False, reason, message)
            }
            CredentialOutcome::ProbeFailed { category } => Check::new(
                Status::Unknown,
                reason::PROBE_FAILED,
                format!("could not ask {token_url} about the client credentials: {category}"),
            ),
        }
    }
}

/// Server-provided text, made safe for a one-line status message.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REMOTE_TEXT)
        .collect();
    if s.chars().count() > MAX_REMOTE_TEXT {
        out.push('…');
    }
    out.trim().to_owned()
}

/// The three checks (Ready, SecretResolved, CredentialsValid) for what was observed.
pub fn checks(
    observed: &Observed,
    secret_ref: &SecretKeyRef,
    namespace: &str,
    token_url: &str,
) -> [Check; 3] {
    if let Err(invalid) = &observed.spec {
        let not_checked = || {
            Check::new(
                Status::Unknown,
                reason::NOT_CHECKED,
                "not checked: the spec is invalid",
            )
        };
        return [
            Check::new(Status::False, reason::INVALID_SPEC, invalid.to_string()),
            not_checked(),
            not_checked(),
        ];
    }
    let secret = observed.secret.as_ref().map_or_else(
        || Check::new(Status::Unknown, reason::NOT_CHECKED, "not checked yet"),
        |s| s.check(secret_ref, namespace),
    );
    let credentials = match (&observed.credentials, secret.is_true()) {
        (Some(c), _) => c.check(token_url),
        (None, true) => Check::new(Status::Unknown, reason::NOT_CHECKED, "not checked yet"),
        (None, false) => Check::new(
            Status::Unknown,
            reason::NOT_CHECKED,
            "not checked: the client secret is not resolved",
        ),
    };
    // Ready carries the first failing stage's verdict, so `kubectl get` shows the cause.
    let ready = [&secret, &credentials]
        .into_iter()
        .find(|c| !c.is_true())
        .map_or_else(
            || {
                Check::new(
                    Status::True,
                    reason::READY,
                    "the client secret resolves and Civic Auth accepts the credentials",
                )
            },
            |failing| (*failing).clone(),
        );
    [ready, secret, credentials]
}

/// The full desired status, keeping `lastTransitionTime` of conditions whose status is unchanged.
pub fn desired(
    generation: Option<i64>,
    observed: &Observed,
    secret_ref: &SecretKeyRef,
    namespace: &str,
    token_url: &str,
    previous: Option<&CivicIntegrationStatus>,
    now: &Time,
) -> CivicIntegrationStatus {
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let conditions = conditions::ALL
        .iter()
        .zip(checks(observed, secret_ref, namespace, token_url))
        .map(|(type_, check)| {
            let prev = previous_conditions.iter().find(|c| c.type_ == *type_);
            conditions::merge(type_, &check, generation, prev, now)
        })
        .collect();
    CivicIntegrationStatus {
        observed_generation: generation,
        conditions,
        bindings: observed.bindings.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{CREDENTIALS_VALID, READY, SECRET_RESOLVED};
    use crate::validation::Problem;

    fn secret_ref() -> SecretKeyRef {
        SecretKeyRef {
            name: "civic-credentials".into(),
            key: "client-secret".into(),
        }
    }

    const URL: &str = "https://auth.civic.com/oauth/token";

    fn observed(secret: Option<SecretOutcome>, creds: Option<CredentialOutcome>) -> Observed {
        Observed {
            spec: Ok(()),
            secret,
            credentials: creds,
            bindings: vec![BindingStatus {
                matched_pods: 3,
                injected_pods: 2,
                ..BindingStatus::of("team", &crate::testing::binding("support", "agent"))
            }],
        }
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn summary(s: &CivicIntegrationStatus) -> Vec<(String, String, String)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn row(t: &str, s: &str, r: &str) -> (String, String, String) {
        (t.into(), s.into(), r.into())
    }

    #[test]
    fn all_good_is_ready() {
        let o = observed(
            Some(SecretOutcome::Resolved),
            Some(CredentialOutcome::Accepted),
        );
        let s = desired(Some(4), &o, &secret_ref(), "team", URL, None, &t(10));
        assert_eq!(
            summary(&s),
            [
                row(READY, "True", reason::READY),
                row(SECRET_RESOLVED, "True", reason::SECRET_FOUND),
                row(CREDENTIALS_VALID, "True", reason::CREDENTIALS_ACCEPTED),
            ]
        );
        assert_eq!(s.observed_generation, Some(4));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
        assert_eq!(s.bindings[0].injected_pods, 2);
    }

    #[test]
    fn missing_secret_blocks_the_probe_and_ready_names_the_cause() {
        let o = observed(Some(SecretOutcome::NotFound), None);
        let s = desired(Some(1), &o, &secret_ref(), "team", URL, None, &t(10));
        assert_eq!(
            summary(&s),
            [
                row(READY, "False", reason::SECRET_NOT_FOUND),
                row(SECRET_RESOLVED, "False", reason::SECRET_NOT_FOUND),
                row(CREDENTIALS_VALID, "Unknown", reason::NOT_CHECKED),
            ]
        );
        assert!(s.conditions[0].message.contains("\"civic-credentials\""));
        assert!(s.conditions[0].message.contains("\"team\""));
    }

    #[test]
    fn invalid_client_is_a_verdict_and_probe_failure_is_unknown() {
        let rejected = CredentialOutcome::Rejected {
            code: "invalid_client".into(),
            description: Some("bad\nsecret".into()),
        };
        let o = observed(Some(SecretOutcome::Resolved), Some(rejected));
        let s = desired(None, &o, &secret_ref(), "team", URL, None, &t(10));
        assert_eq!(s.conditions[0].reason, reason::INVALID_CLIENT);
        assert_eq!(s.conditions[2].status, "False");
        assert!(
            s.conditions[2]
                .message
                .ends_with("invalid_client (bad secret)")
        );

        let other = CredentialOutcome::Rejected {
            code: "unauthorized_client".into(),
            description: None,
        };
        let o = observed(Some(SecretOutcome::Resolved), Some(other));
        let s = desired(None, &o, &secret_ref(), "team", URL, None, &t(10));
        assert_eq!(s.conditions[2].reason, reason::CREDENTIALS_REJECTED);

        let failed = CredentialOutcome::ProbeFailed {
            category: "timeout",
        };
        let o = observed(Some(SecretOutcome::Resolved), Some(failed));
        let s = desired(None, &o, &secret_ref(), "team", URL, None, &t(10));
        assert_eq!(summary(&s)[0], row(READY, "Unknown", reason::PROBE_FAILED));
        assert!(s.conditions[2].message.ends_with(": timeout"));
    }

    #[test]
    fn invalid_spec_skips_later_stages() {
        let mut o = observed(Some(SecretOutcome::Resolved), None);
        o.spec = Err(InvalidSpec(vec![Problem {
            path: "spec.tokenUrl".into(),
            message: "must use https".into(),
        }]));
        let s = desired(Some(2), &o, &secret_ref(), "team", URL, None, &t(10));
        assert_eq!(
            summary(&s),
            [
                row(READY, "False", reason::INVALID_SPEC),
                row(SECRET_RESOLVED, "Unknown", reason::NOT_CHECKED),
                row(CREDENTIALS_VALID, "Unknown", reason::NOT_CHECKED),
            ]
        );
        assert_eq!(s.conditions[0].message, "spec.tokenUrl: must use https");
    }

    #[test]
    fn a_second_identical_observation_is_equal_even_later() {
        let o = observed(
            Some(SecretOutcome::Resolved),
            Some(CredentialOutcome::Accepted),
        );
        let first = desired(Some(1), &o, &secret_ref(), "team", URL, None, &t(10));
        let again = desired(
            Some(1),
            &o,
            &secret_ref(),
            "team",
            URL,
            Some(&first),
            &t(99),
        );
        assert_eq!(first, again);
    }

    #[test]
    fn fixing_the_secret_moves_only_changed_transition_times() {
        let o1 = observed(Some(SecretOutcome::KeyNotFound), None);
        let s1 = desired(Some(1), &o1, &secret_ref(), "team", URL, None, &t(10));
        let o2 = observed(
            Some(SecretOutcome::Resolved),
            Some(CredentialOutcome::Rejected {
                code: "invalid_client".into(),
                description: None,
            }),
        );
        let s2 = desired(Some(1), &o2, &secret_ref(), "team", URL, Some(&s1), &t(20));
        // Ready stays False (new reason): same transition time; the other two flipped.
        assert_eq!(s2.conditions[0].last_transition_time, t(10));
        assert_eq!(s2.conditions[1].last_transition_time, t(20));
        assert_eq!(s2.conditions[2].last_transition_time, t(20));
        assert_eq!(conditions::changed(&s1.conditions, &s2.conditions).len(), 3);
    }

    #[test]
    fn long_remote_text_is_truncated() {
        let c = CredentialOutcome::Rejected {
            code: "invalid_client".into(),
            description: Some("x".repeat(1000)),
        };
        assert!(c.check(URL).message.len() < 400);
    }
}
