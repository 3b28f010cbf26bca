//! The reconciler's error type. Every variant has a low-cardinality [`Error::category`] used as a
//! metric label; `Display` never includes a secret.

use std::time::Duration;

use crate::probe::ProbeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The credential probe reached no verdict (network, timeout, 5xx, 429).
    #[error("credential probe: {0}")]
    Probe(#[from] ProbeError),
    /// This replica lost its lease: it must not write.
    #[error("not the leader")]
    NotLeader,
    /// The pod cache did not finish its initial list in time.
    #[error("pod cache not ready after {}s", .0.as_secs())]
    PodCacheNotReady(Duration),
    /// The object lacks a namespace (cannot happen for a namespaced kind).
    #[error("object has no namespace")]
    MissingNamespace,
}

impl Error {
    /// Low-cardinality label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(e) => kube_category(e),
            Error::Probe(_) => "probe",
            Error::NotLeader => "not_leader",
            Error::PodCacheNotReady(_) => "cache_not_ready",
            Error::MissingNamespace => "invalid_object",
        }
    }

    /// The delay the server asked for, if any (e.g. a token endpoint's `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Probe(p) => p.retry_after(),
            _ => None,
        }
    }
}

/// Kubernetes API errors by HTTP status class.
pub fn kube_category(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) => match s.code {
            404 => "api_not_found",
            409 => "api_conflict",
            401 | 403 => "api_forbidden",
            422 => "api_invalid",
            429 => "api_throttled",
            500..=599 => "api_server_error",
            _ => "api_error",
        },
        _ => "api_unreachable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        let status = kube::core::Status::failure("x", "Reason").with_code(code);
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn categories_are_by_status_class() {
        assert_eq!(api(404).category(), "api_not_found");
        assert_eq!(api(409).category(), "api_conflict");
        assert_eq!(api(503).category(), "api_server_error");
        assert_eq!(api(403).category(), "api_forbidden");
        assert_eq!(Error::NotLeader.category(), "not_leader");
    }
}
