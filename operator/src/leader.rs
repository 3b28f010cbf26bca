//! Leader election on a `coordination.k8s.io/v1` Lease (kube-runtime 5 ships none).
//!
//! The rules are client-go's: a candidate takes the lease only when it is free or when its record
//! has not changed for a whole `leaseDurationSeconds` *as observed locally* (no trust in other
//! machines' clocks); every write carries the read `resourceVersion`, so of two racing candidates
//! exactly one wins (the other gets 409). The holder renews every `retry_period` and stops leading
//! once it has not renewed for `renew_deadline`, which is shorter than the lease duration: it
//! has stopped before anyone else can see the lease as expired, so two replicas never lead at once.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

use crate::metrics::Metrics;

/// Lease timing and identity.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name); must be unique among replicas.
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// The holder gives up leading when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Time between acquire or renew attempts.
    pub retry_period: Duration,
}

/// Invalid lease timing.
#[derive(Debug, thiserror::Error)]
#[error("lease timing must satisfy lease duration > renew deadline > retry period > 0")]
pub struct InvalidLeaseTiming;

impl LeaseSettings {
    pub fn check(&self) -> Result<(), InvalidLeaseTiming> {
        (self.lease_duration > self.renew_deadline
            && self.renew_deadline > self.retry_period
            && self.retry_period > Duration::ZERO)
            .then_some(())
            .ok_or(InvalidLeaseTiming)
    }
}

/// The lease record as last seen, and when it was first seen with this content.
#[derive(Debug)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: Option<i32>,
    duration: Duration,
    since: Instant,
}

/// One replica's handle on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.settings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Notes the record; the local clock restarts whenever its content changes.
    fn observe(&mut self, spec: &LeaseSpec, now: Instant) {
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.lease_duration, Duration::from_secs);
        let same = self.observed.as_ref().is_some_and(|o| {
            o.holder == holder
                && o.renew_time == spec.renew_time
                && o.transitions == spec.lease_transitions
        });
        if !same {
            self.observed = Some(Observed {
                holder,
                renew_time: spec.renew_time.clone(),
                transitions: spec.lease_transitions,
                duration,
                since: now,
            });
        }
    }

    /// Takes the lease if it is free or expired, renews it if held: `Ok(true)` while leading.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let id = self.settings.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(id),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created.spec.unwrap_or_default(), Instant::now());
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };

        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(&spec, Instant::now());
        let observed = self.observed.as_ref().expect("observe() just set it");
        let holder = observed.holder.as_deref();
        let mine = holder == Some(id.as_str());
        let expired = observed.since.elapsed() >= observed.duration;
        if holder.is_some() && !mine && !expired {
            return Ok(false);
        }

        let mut next = spec.clone();
        next.holder_identity = Some(id);
        next.lease_duration_seconds = Some(self.duration_secs());
        next.renew_time = Some(now.clone());
        if !mine {
            next.acquire_time = Some(now);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(next);
        // `replace` sends the resourceVersion just read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated.spec.unwrap_or_default(), Instant::now());
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if this replica holds it, so a successor need not wait for expiry.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// How long this replica may act as the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    NotLeading,
    /// Until the renew deadline counted from the last renewal that succeeded.
    Until(Instant),
    Always,
}

/// Whether this replica currently leads; reconcile checks it before every write.
///
/// Leadership is bounded by time, not only by the campaign loop's verdict: a replica frozen
/// (SIGSTOP, a paused VM, a long GC-like stall) wakes with its timers and its reconciles due at
/// once, and a reconcile may reach its write before the loop has noticed the lost lease. The
/// gate closes by itself at the renew deadline, before any other replica can take over.
#[derive(Clone, Debug)]
pub struct LeaderGate(watch::Receiver<Term>);

impl LeaderGate {
    pub fn is_leading(&self) -> bool {
        match *self.0.borrow() {
            Term::NotLeading => false,
            Term::Until(deadline) => Instant::now() < deadline,
            Term::Always => true,
        }
    }
    /// A gate fixed at `leading` (tests, single-replica tools).
    pub fn fixed(leading: bool) -> Self {
        // A receiver keeps the last value after its sender is gone.
        let term = if leading {
            Term::Always
        } else {
            Term::NotLeading
        };
        let (_tx, rx) = watch::channel(term);
        Self(rx)
    }
}

/// How [`run`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// `shutdown` resolved; the lease was released if held.
    Shutdown,
    /// The leader's work returned by itself (it should run until cancelled).
    WorkEnded,
}

/// Campaigns for the lease and runs `lead()` (spawned) while holding it. On losing the lease the
/// work is aborted and awaited *before* the gate flips back, then campaigning resumes; on
/// `shutdown` the work stops and the lease is released.
pub async fn run<F, Fut>(
    mut lock: LeaseLock,
    metrics: Metrics,
    ready: impl Fn(bool),
    shutdown: impl Future<Output = ()>,
    mut lead: F,
) -> (LeaderGate, Ended)
where
    F: FnMut(LeaderGate) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let s = lock.settings.clone();
    let (tx, rx) = watch::channel(Term::NotLeading);
    let gate = LeaderGate(rx);
    tokio::pin!(shutdown);
    loop {
        // Candidate: try until the lease is ours.
        let mut term_start;
        loop {
            term_start = Instant::now();
            let attempt = timeout(s.renew_deadline, lock.try_acquire_or_renew());
            let got = tokio::select! {
                _ = &mut shutdown => return (gate, Ended::Shutdown),
                r = attempt => r,
            };
            match got {
                Ok(Ok(true)) => {
                    ready(true);
                    break;
                }
                Ok(Ok(false)) => ready(true),
                Ok(Err(e)) => tracing::warn!(error = %e, "lease attempt failed"),
                Err(_) => tracing::warn!("lease attempt timed out"),
            }
            tokio::select! {
                _ = &mut shutdown => return (gate, Ended::Shutdown),
                _ = sleep(civic_sidecar::backoff::jittered(s.retry_period)) => {}
            }
        }

        tracing::info!(identity = %s.identity, lease = %s.name, "became leader");
        tx.send_replace(Term::Until(term_start + s.renew_deadline));
        metrics.leader.set(1);
        let mut work = tokio::spawn(lead(gate.clone()));
        // Measured from when the last successful request was *sent*: others can only have
        // observed that renewal later than this.
        let mut renewed_at = term_start;
        let ended = loop {
            tokio::select! {
                _ = &mut shutdown => break Some(Ended::Shutdown),
                _ = &mut work => break Some(Ended::WorkEnded),
                _ = sleep(s.retry_period) => {}
            }
            let sent = Instant::now();
            let left = s.renew_deadline.saturating_sub(sent - renewed_at);
            match timeout(left, lock.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    renewed_at = sent;
                    tx.send_replace(Term::Until(sent + s.renew_deadline));
                }
                Ok(Ok(false)) => {
                    tracing::warn!("lease taken by another replica");
                    break None;
                }
                Ok(Err(e)) if renewed_at.elapsed() < s.renew_deadline => {
                    tracing::warn!(error = %e, "lease renewal failed; retrying");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lease renewal failed past the deadline");
                    break None;
                }
                Err(_) => {
                    tracing::warn!("lease not renewed within the deadline");
                    break None;
                }
            }
        };
        work.abort();
        let _ = (&mut work).await;
        tx.send_replace(Term::NotLeading);
        metrics.leader.set(0);
        tracing::info!(identity = %s.identity, "stopped leading");
        if let Some(ended) = ended {
            if let Err(e) = timeout(s.renew_deadline, lock.release())
                .await
                .unwrap_or(Ok(()))
            {
                tracing::warn!(error = %e, "lease release failed");
            }
            return (gate, ended);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ApiMock, json_response, status_response};
    use http::Method;
    use serde_json::json;

    fn settings(identity: &str) -> LeaseSettings {
        LeaseSettings {
            namespace: "civic-system".into(),
            name: "civic-operator".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/civic-system/leases/civic-operator";

    fn lease(holder: Option<&str>, renew: &str, rv: &str) -> serde_json::Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "civic-operator", "namespace": "civic-system", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": renew, "leaseTransitions": 3}
        })
    }

    #[test]
    fn timing_is_checked() {
        assert!(settings("a").check().is_ok());
        let mut s = settings("a");
        s.renew_deadline = s.lease_duration;
        assert!(s.check().is_err());
    }

    #[tokio::test]
    async fn creates_a_missing_lease() {
        let (client, mock) = ApiMock::new();
        let mut lock = LeaseLock::new(client, settings("me"));
        let server = tokio::spawn(async move {
            let mut mock = mock;
            mock.expect(Method::GET, PATH, status_response(404)).await;
            let body = mock
                .expect(
                    Method::POST,
                    "/apis/coordination.k8s.io/v1/namespaces/civic-system/leases",
                    json_response(201, lease(Some("me"), "2026-01-01T00:00:00.000000Z", "1")),
                )
                .await;
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        });
        assert!(lock.try_acquire_or_renew().await.unwrap());
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn takes_over_only_after_the_record_is_unchanged_for_a_lease_duration() {
        let (client, mut mock) = ApiMock::new();
        let mut lock = LeaseLock::new(client, settings("me"));
        let held = lease(Some("other"), "2026-01-01T00:00:00.000000Z", "7");
        let get = || json_response(200, held.clone());

        // First sight, and 10 s later: not expired by the local clock.
        let (r, _) = tokio::join!(
            lock.try_acquire_or_renew(),
            mock.expect(Method::GET, PATH, get())
        );
        assert!(!r.unwrap());
        tokio::time::advance(Duration::from_secs(10)).await;
        let (r, _) = tokio::join!(
            lock.try_acquire_or_renew(),
            mock.expect(Method::GET, PATH, get())
        );
        assert!(!r.unwrap());

        // 16 s after first sight: expired; the write must carry the version it read.
        tokio::time::advance(Duration::from_secs(6)).await;
        let script = async {
            mock.expect(Method::GET, PATH, get()).await;
            let taken = lease(Some("me"), "2026-01-01T00:00:16.000000Z", "8");
            mock.expect(Method::PUT, PATH, json_response(200, taken))
                .await
        };
        let (r, body) = tokio::join!(lock.try_acquire_or_renew(), script);
        assert!(r.unwrap());
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_record_restarts_the_expiry_clock() {
        let (client, mut mock) = ApiMock::new();
        let mut lock = LeaseLock::new(client, settings("me"));
        let r1 = lease(Some("other"), "2026-01-01T00:00:00.000000Z", "7");
        let r2 = lease(Some("other"), "2026-01-01T00:00:14.000000Z", "8");
        for (advance, record) in [(0, r1), (14, r2.clone()), (14, r2)] {
            tokio::time::advance(Duration::from_secs(advance)).await;
            let (r, _) = tokio::join!(
                lock.try_acquire_or_renew(),
                mock.expect(Method::GET, PATH, json_response(200, record))
            );
            // The last round: 14 s since the renewal was first seen, still < 15 s.
            assert!(!r.unwrap());
        }
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_a_lost_race_is_not_leadership() {
        let (client, mock) = ApiMock::new();
        let mut lock = LeaseLock::new(client, settings("me"));
        let server = tokio::spawn(async move {
            let mut mock = mock;
            let free = lease(None, "2026-01-01T00:00:00.000000Z", "9");
            mock.expect(Method::GET, PATH, json_response(200, free))
                .await;
            mock.expect(Method::PUT, PATH, status_response(409)).await;
        });
        assert!(!lock.try_acquire_or_renew().await.unwrap());
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_closes_at_the_renew_deadline_even_when_the_campaign_is_stuck() {
        let (client, mut mock) = ApiMock::new();
        let lock = LeaseLock::new(client, settings("me"));
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel();
        let mut gate_tx = Some(gate_tx);
        let campaign = tokio::spawn(run(
            lock,
            Metrics::new(),
            |_| {},
            std::future::pending(),
            move |gate| {
                if let Some(tx) = gate_tx.take() {
                    let _ = tx.send(gate);
                }
                std::future::pending::<()>()
            },
        ));
        mock.expect(Method::GET, PATH, status_response(404)).await;
        mock.expect(
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/civic-system/leases",
            json_response(201, lease(Some("me"), "2026-01-01T00:00:00.000000Z", "1")),
        )
        .await;
        let gate = gate_rx.await.unwrap();
        assert!(gate.is_leading());
        // The campaign loop never runs again (as in a process frozen and thawed: its timers and
        // the reconciles are due at the same moment). Only time can close the gate now.
        campaign.abort();
        let _ = campaign.await;
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(gate.is_leading(), "within the 10 s renew deadline");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            !gate.is_leading(),
            "past the renew deadline a replica must not act as the leader"
        );
        assert!(LeaderGate::fixed(true).is_leading());
        assert!(!LeaderGate::fixed(false).is_leading());
    }

    #[tokio::test]
    async fn release_frees_only_our_own_lease() {
        let (client, mock) = ApiMock::new();
        let mut lock = LeaseLock::new(client, settings("me"));
        let server = tokio::spawn(async move {
            let mut mock = mock;
            let mine = lease(Some("me"), "2026-01-01T00:00:00.000000Z", "3");
            mock.expect(Method::GET, PATH, json_response(200, mine.clone()))
                .await;
            let body = mock
                .expect(Method::PUT, PATH, json_response(200, mine))
                .await;
            assert!(
                body["spec"]
                    .get("holderIdentity")
                    .is_none_or(|h| h.is_null())
            );
            assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
            let theirs = lease(Some("other"), "2026-01-01T00:00:00.000000Z", "4");
            mock.expect(Method::GET, PATH, json_response(200, theirs))
                .await;
        });
        lock.release().await.unwrap();
        lock.release().await.unwrap(); // not ours: no write
        server.await.unwrap();
    }
}
