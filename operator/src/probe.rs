//! The credential probe: a token exchange with a deliberately invalid subject tells
//! bad client credentials (`invalid_client`) from good ones (`invalid_grant`) without any real
//! subject token. The exchange itself is the sidecar library's client; this module adds the
//! per-integration rate limit and the verdict cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use civic_sidecar::exchange::{
    ClientCredentials, CredentialVerdict, ExchangeClient, ExchangeError,
};
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use url::Url;

use crate::status::CredentialOutcome;

/// Most token URLs whose HTTP clients are kept (one per distinct URL; normally one).
const MAX_CLIENTS: usize = 32;

/// The probe reached no verdict.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ProbeError(#[from] pub ExchangeError);

impl ProbeError {
    /// Low-cardinality label (`timeout`, `network`, `unavailable`…).
    pub fn category(&self) -> &'static str {
        self.0.category()
    }
    /// The token endpoint's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after()
    }
}

/// Asks a token endpoint whether client credentials are good. A trait so reconcile tests can
/// script verdicts.
pub trait CredentialProbe: Send + Sync + 'static {
    fn probe<'a>(
        &'a self,
        token_url: &'a Url,
        credentials: &'a ClientCredentials,
    ) -> BoxFuture<'a, Result<CredentialVerdict, ProbeError>>;
}

/// The real probe: the sidecar's [`ExchangeClient`], one per token URL.
pub struct ExchangeProbe {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    clients: Mutex<HashMap<Url, ExchangeClient>>,
}

impl ExchangeProbe {
    /// `tls` from `civic_sidecar::tls::client_config` (public roots plus an optional extra CA).
    pub fn new(tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Self {
        Self {
            tls,
            timeout,
            clients: Mutex::default(),
        }
    }

    fn client(&self, token_url: &Url) -> Result<ExchangeClient, ExchangeError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(token_url) {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let c = ExchangeClient::new(token_url.clone(), self.tls.clone(), self.timeout)?;
        clients.insert(token_url.clone(), c.clone());
        Ok(c)
    }
}

impl CredentialProbe for ExchangeProbe {
    fn probe<'a>(
        &'a self,
        token_url: &'a Url,
        credentials: &'a ClientCredentials,
    ) -> BoxFuture<'a, Result<CredentialVerdict, ProbeError>> {
        Box::pin(async move {
            let client = self.client(token_url)?;
            Ok(client.probe_credentials(credentials).await?)
        })
    }
}

impl From<&CredentialVerdict> for CredentialOutcome {
    fn from(v: &CredentialVerdict) -> Self {
        match v {
            CredentialVerdict::Valid => CredentialOutcome::Accepted,
            CredentialVerdict::Invalid { code, description } => CredentialOutcome::Rejected {
                code: code.clone(),
                description: description.clone(),
            },
        }
    }
}

/// Everything a verdict depends on, minus the secret itself: the Secret's uid and
/// resourceVersion stand for its content, so a rotated Secret is re-probed at once and no secret
/// material is kept in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeInputs {
    pub token_url: String,
    pub client_id: String,
    pub secret_uid: Option<String>,
    pub secret_resource_version: Option<String>,
    pub secret_key: String,
}

/// What the reconciler should do about the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// A verdict for these inputs is fresh: use it; it goes stale after the duration.
    Reuse(CredentialVerdict, Duration),
    /// Probe now.
    Probe,
    /// The inputs changed but the integration was probed moments ago: come back after this.
    Wait(Duration),
}

struct Entry {
    inputs: ProbeInputs,
    verdict: Option<(CredentialVerdict, Instant)>,
    last_attempt: Instant,
    last_seen: Instant,
}

/// Per-integration verdict cache and rate limit.
pub struct ProbeCache {
    /// How long a verdict is reused for unchanged inputs.
    fresh_for: Duration,
    /// Least time between two probes of one integration, whatever changed.
    min_gap: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl ProbeCache {
    pub fn new(fresh_for: Duration, min_gap: Duration) -> Self {
        Self {
            fresh_for,
            min_gap,
            entries: Mutex::default(),
        }
    }

    /// How long a verdict stays fresh.
    pub fn fresh_for(&self) -> Duration {
        self.fresh_for
    }

    /// Decides whether integration `key` must be probed for `inputs` at `now`.
    pub fn plan(&self, key: &str, inputs: &ProbeInputs, now: Instant) -> Plan {
        let mut entries = self.lock();
        // Forget integrations not reconciled for a long time (deleted ones, mostly).
        let retention = (self.fresh_for * 3).max(Duration::from_secs(3600));
        entries.retain(|_, e| now.saturating_duration_since(e.last_seen) < retention);
        let Some(e) = entries.get_mut(key) else {
            return Plan::Probe;
        };
        e.last_seen = now;
        if e.inputs == *inputs
            && let Some((verdict, at)) = &e.verdict
        {
            let age = now.saturating_duration_since(*at);
            if age < self.fresh_for {
                return Plan::Reuse(verdict.clone(), self.fresh_for - age);
            }
        }
        let since = now.saturating_duration_since(e.last_attempt);
        if since < self.min_gap {
            return Plan::Wait(self.min_gap - since);
        }
        Plan::Probe
    }

    /// Records a probe's result. A failure keeps an earlier verdict for the same inputs, which
    /// [`ProbeCache::last_verdict`] still returns: a flaky network is no reason to flip a
    /// condition.
    pub fn record(
        &self,
        key: &str,
        inputs: &ProbeInputs,
        result: Result<&CredentialVerdict, &ProbeError>,
        now: Instant,
    ) {
        let mut entries = self.lock();
        let e = entries.entry(key.to_owned()).or_insert_with(|| Entry {
            inputs: inputs.clone(),
            verdict: None,
            last_attempt: now,
            last_seen: now,
        });
        if e.inputs != *inputs {
            e.inputs = inputs.clone();
            e.verdict = None;
        }
        e.last_attempt = now;
        e.last_seen = now;
        if let Ok(v) = result {
            e.verdict = Some((v.clone(), now));
        }
    }

    /// The last verdict for exactly these inputs, however old.
    pub fn last_verdict(&self, key: &str, inputs: &ProbeInputs) -> Option<CredentialVerdict> {
        let entries = self.lock();
        let e = entries.get(key)?;
        (e.inputs == *inputs)
            .then(|| e.verdict.as_ref().map(|(v, _)| v.clone()))
            .flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(version: &str) -> ProbeInputs {
        ProbeInputs {
            token_url: "https://auth.civic.com/oauth/token".into(),
            client_id: "client".into(),
            secret_uid: Some("uid-1".into()),
            secret_resource_version: Some(version.into()),
            secret_key: "client-secret".into(),
        }
    }

    fn timeout_error() -> ProbeError {
        ProbeError(ExchangeError::Timeout(Duration::from_secs(5)))
    }

    const FRESH: Duration = Duration::from_secs(600);
    const GAP: Duration = Duration::from_secs(5);

    #[test]
    fn first_sight_probes_and_a_fresh_verdict_is_reused() {
        let c = ProbeCache::new(FRESH, GAP);
        let t0 = Instant::now();
        assert_eq!(c.plan("ns/a", &inputs("1"), t0), Plan::Probe);
        c.record("ns/a", &inputs("1"), Ok(&CredentialVerdict::Valid), t0);
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(
            c.plan("ns/a", &inputs("1"), t1),
            Plan::Reuse(CredentialVerdict::Valid, FRESH - Duration::from_secs(60))
        );
        // Other integrations are independent.
        assert_eq!(c.plan("ns/b", &inputs("1"), t1), Plan::Probe);
    }

    #[test]
    fn a_stale_verdict_is_reprobed() {
        let c = ProbeCache::new(FRESH, GAP);
        let t0 = Instant::now();
        c.record("k", &inputs("1"), Ok(&CredentialVerdict::Valid), t0);
        assert_eq!(c.plan("k", &inputs("1"), t0 + FRESH), Plan::Probe);
    }

    #[test]
    fn a_rotated_secret_is_reprobed_at_once_but_not_more_often_than_the_gap() {
        let c = ProbeCache::new(FRESH, GAP);
        let t0 = Instant::now();
        c.record("k", &inputs("1"), Ok(&CredentialVerdict::Valid), t0);
        let soon = t0 + Duration::from_secs(2);
        assert_eq!(
            c.plan("k", &inputs("2"), soon),
            Plan::Wait(Duration::from_secs(3))
        );
        let later = t0 + Duration::from_secs(30);
        assert_eq!(c.plan("k", &inputs("2"), later), Plan::Probe);
    }

    #[test]
    fn failures_keep_the_verdict_for_the_same_inputs_only() {
        let c = ProbeCache::new(FRESH, GAP);
        let t0 = Instant::now();
        let invalid = CredentialVerdict::Invalid {
            code: "invalid_client".into(),
            description: None,
        };
        c.record("k", &inputs("1"), Ok(&invalid), t0);
        let err = timeout_error();
        c.record("k", &inputs("1"), Err(&err), t0 + FRESH);
        assert_eq!(c.last_verdict("k", &inputs("1")), Some(invalid));
        // A failed attempt counts for the rate limit.
        assert!(matches!(
            c.plan("k", &inputs("1"), t0 + FRESH + Duration::from_secs(1)),
            Plan::Wait(_)
        ));
        c.record("k", &inputs("2"), Err(&err), t0 + FRESH * 2);
        assert_eq!(c.last_verdict("k", &inputs("2")), None);
        assert_eq!(c.last_verdict("k", &inputs("1")), None);
    }

    #[test]
    fn forgotten_integrations_are_dropped() {
        let c = ProbeCache::new(Duration::from_secs(10), GAP);
        let t0 = Instant::now();
        c.record("gone", &inputs("1"), Ok(&CredentialVerdict::Valid), t0);
        let much_later = t0 + Duration::from_secs(7200);
        assert_eq!(c.plan("other", &inputs("1"), much_later), Plan::Probe);
        assert_eq!(c.last_verdict("gone", &inputs("1")), None);
    }
}
