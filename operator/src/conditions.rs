//! Condition vocabulary of `CivicIntegration` status, as constants (reasons are an API: users
//! alert on them), and the merge rule that keeps `lastTransitionTime` stable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The integration can be used: spec valid, Secret resolved, credentials accepted.
pub const READY: &str = "Ready";
/// The client secret reference resolves to a non-empty key of an existing Secret.
pub const SECRET_RESOLVED: &str = "SecretResolved";
/// Civic Auth accepted the client credentials (credential probe).
pub const CREDENTIALS_VALID: &str = "CredentialsValid";

/// Condition types in the order the status lists them.
pub const ALL: [&str; 3] = [READY, SECRET_RESOLVED, CREDENTIALS_VALID];

/// Reasons, CamelCase as Kubernetes requires.
pub mod reason {
    /// `Ready=True`.
    pub const READY: &str = "Ready";
    /// The spec fails a check the schema cannot express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A stage did not run because an earlier one failed.
    pub const NOT_CHECKED: &str = "NotChecked";

    /// `SecretResolved=True`.
    pub const SECRET_FOUND: &str = "SecretFound";
    /// The referenced Secret does not exist (in the integration's namespace).
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The Secret exists but lacks the referenced key.
    pub const KEY_NOT_FOUND: &str = "KeyNotFound";
    /// The key exists but is empty (or only whitespace).
    pub const KEY_EMPTY: &str = "KeyEmpty";
    /// The key's value is not UTF-8 text.
    pub const KEY_NOT_TEXT: &str = "KeyNotText";
    /// The operator may not read the Secret: its namespace is not one the operator serves
    /// (`--secret-namespaces`), or RBAC refused the read.
    pub const SECRET_FORBIDDEN: &str = "SecretForbidden";

    /// `CredentialsValid=True`: Civic Auth authenticated the client.
    pub const CREDENTIALS_ACCEPTED: &str = "CredentialsAccepted";
    /// Civic Auth answered `invalid_client`: wrong client ID or secret.
    pub const INVALID_CLIENT: &str = "InvalidClient";
    /// Civic Auth refused the client with another OAuth error (e.g. `unauthorized_client`).
    pub const CREDENTIALS_REJECTED: &str = "CredentialsRejected";
    /// The probe could not reach a verdict (network, timeout, 5xx, 429): transient.
    pub const PROBE_FAILED: &str = "ProbeFailed";
}

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// What one check concluded, before it becomes a [`Condition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    pub reason: &'static str,
    /// Stable text (no timestamps or counters) so an unchanged state compares equal.
    pub message: String,
}

impl Check {
    pub fn new(status: Status, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
    pub fn is_true(&self) -> bool {
        self.status == Status::True
    }
}

/// Builds the condition for `check`, keeping the previous `lastTransitionTime` unless the status
/// itself changed (Kubernetes API conventions: reason/message updates are not transitions).
pub fn merge(
    type_: &str,
    check: &Check,
    generation: Option<i64>,
    previous: Option<&Condition>,
    now: &Time,
) -> Condition {
    let last_transition_time = match previous {
        Some(p) if p.status == check.status.as_str() => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.to_owned(),
        status: check.status.as_str().to_owned(),
        reason: check.reason.to_owned(),
        message: check.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Conditions that are new or whose status, reason or message differ from before: each is worth
/// an Event. `observedGeneration` alone is not a change.
pub fn changed<'a>(previous: &[Condition], desired: &'a [Condition]) -> Vec<&'a Condition> {
    desired
        .iter()
        .filter(|d| {
            !previous.iter().any(|p| {
                p.type_ == d.type_
                    && p.status == d.status
                    && p.reason == d.reason
                    && p.message == d.message
            })
        })
        .collect()
}

/// `now`, truncated to whole seconds: the API stores `Time` at second precision, and a
/// sub-second value would never compare equal to what was read back.
pub fn now() -> Time {
    let ts = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0 = time(1_000);
        let t1 = time(2_000);
        let first = merge(
            READY,
            &Check::new(Status::False, reason::SECRET_NOT_FOUND, "missing"),
            Some(1),
            None,
            &t0,
        );
        assert_eq!(first.last_transition_time, t0);

        // Same status, new reason and generation: not a transition.
        let same = merge(
            READY,
            &Check::new(Status::False, reason::INVALID_CLIENT, "rejected"),
            Some(2),
            Some(&first),
            &t1,
        );
        assert_eq!(same.last_transition_time, t0);
        assert_eq!(same.reason, reason::INVALID_CLIENT);
        assert_eq!(same.observed_generation, Some(2));

        let flipped = merge(
            READY,
            &Check::new(Status::True, reason::READY, "ok"),
            Some(2),
            Some(&same),
            &t1,
        );
        assert_eq!(flipped.last_transition_time, t1);
        assert_eq!(flipped.status, "True");
    }

    #[test]
    fn changes_are_status_reason_or_message_changes() {
        let t = time(5);
        let a = merge(
            READY,
            &Check::new(Status::False, "A", "m"),
            Some(1),
            None,
            &t,
        );
        let a_gen = merge(
            READY,
            &Check::new(Status::False, "A", "m"),
            Some(2),
            None,
            &time(9),
        );
        let b_msg = merge(
            READY,
            &Check::new(Status::False, "A", "other"),
            None,
            None,
            &t,
        );
        let b_reason = merge(READY, &Check::new(Status::False, "B", "m"), None, None, &t);
        let s = merge(
            SECRET_RESOLVED,
            &Check::new(Status::True, "S", "m"),
            None,
            None,
            &t,
        );
        let prev = std::slice::from_ref(&a);
        assert!(changed(prev, std::slice::from_ref(&a_gen)).is_empty());
        assert_eq!(changed(prev, std::slice::from_ref(&b_msg)).len(), 1);
        assert_eq!(changed(prev, std::slice::from_ref(&b_reason)).len(), 1);
        assert_eq!(changed(prev, std::slice::from_ref(&s)), vec![&s]);
    }

    #[test]
    fn now_has_whole_seconds() {
        assert_eq!(now().0.subsec_nanosecond(), 0);
    }
}
