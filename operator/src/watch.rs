//! Watch plumbing shared by every watch of the operator (the controller's integrations, Secrets
//! and pods; the webhook's integration cache; the webhook configuration the certificate loop
//! repairs): one backoff, and an expired watch relisted at once. After an apiserver restart every
//! watch comes back within seconds instead of sitting out kube-runtime's 30 s default backoff.

use std::time::Duration;

use civic_sidecar::backoff::{Jitter, Retries};
use futures_util::{Stream, StreamExt};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};

/// A watcher stream as every watch here runs it: [`relist_at_once`] on 410 Gone, then
/// [`WatchBackoff`] between retries. `watch` names it in logs.
pub fn resilient<S, T>(
    watch: &'static str,
    stream: S,
) -> impl Stream<Item = Result<T, watcher::Error>>
where
    S: Stream<Item = Result<T, watcher::Error>> + Send,
{
    relist_at_once(watch, stream).backoff(WatchBackoff::default())
}

/// Retry delays of every watch after an error: doubling from 500 ms to 5 s with up
/// to 20% jitter ([`civic_sidecar::backoff`]), reset by any event.
///
/// kube-runtime's default (client-go's 800 ms … 30 s) sat on the controller's merged trigger
/// stream, so every error of any watch paused them all: after an apiserver restart the outage's
/// connection errors, the 403s while its RBAC cache warms up and the 410s of the expired watches
/// added up, and the pod and Secret triggers (and the pod cache, filled as its stream is polled)
/// stayed paused for 30 s or more after the apiserver was back. Now each watch backs off on its
/// own ([`objects_only`]); a handful of watches per process retrying every 5 s burden no
/// apiserver.
#[derive(Clone, Debug)]
pub struct WatchBackoff(Retries);

impl Default for WatchBackoff {
    fn default() -> Self {
        Self(
            civic_sidecar::backoff::Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(5),
                jitter: Jitter::Up20,
            }
            .retries(),
        )
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// Drops a watch's 410 Gone before its backoff sees it: the watcher is already relisting, and an
/// expired resource version is the apiserver's normal request to do so (after a restart, or a
/// compaction), not a failure to wait out.
pub fn relist_at_once<S, T>(
    watch: &'static str,
    stream: S,
) -> impl Stream<Item = Result<T, watcher::Error>>
where
    S: Stream<Item = Result<T, watcher::Error>>,
{
    stream.filter(move |item| {
        let expired = matches!(item, Err(watcher::Error::WatchError(s)) if s.code == 410);
        if expired {
            tracing::debug!(watch, "watch expired (410 Gone): relisting");
        }
        futures_util::future::ready(!expired)
    })
}

/// Passes a watch's objects on and only logs its errors: each watch retries by itself after its
/// own [`WatchBackoff`]. Errors reaching the controller's merged trigger stream would pause every
/// watch at once (its backoff is shared), one pause per error of any watch.
pub fn objects_only<T>(
    watch: &'static str,
    stream: impl Stream<Item = Result<T, watcher::Error>>,
) -> impl Stream<Item = Result<T, watcher::Error>> {
    stream.filter_map(move |item| {
        futures_util::future::ready(match item {
            Ok(obj) => Some(Ok(obj)),
            Err(e) => {
                tracing::debug!(watch, error = %e, "watch error; retrying");
                None
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_doubles_to_its_cap_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = b.by_ref().take(8).collect();
        // Jitter adds at most 20%.
        let within = |d: Duration, base_ms: u64| {
            let base = Duration::from_millis(base_ms);
            d >= base && d <= base.mul_f64(1.2)
        };
        for (d, base) in delays
            .iter()
            .zip([500, 1000, 2000, 4000, 5000, 5000, 5000, 5000])
        {
            assert!(within(*d, base), "{d:?} for a base of {base} ms");
        }
        b.reset();
        assert!(within(b.next().unwrap(), 500), "reset starts over");
    }

    #[tokio::test]
    async fn an_expired_watch_is_relisted_without_a_backoff_pause() {
        let status = |code: u16| {
            let mut s = kube::core::Status::failure("expired", "Expired");
            s.code = code;
            watcher::Error::WatchError(Box::new(s))
        };
        let items =
            futures_util::stream::iter(vec![Ok(1), Err(status(410)), Err(status(500)), Ok(2)]);
        let out: Vec<String> = relist_at_once("test", items)
            .map(|r| match r {
                Ok(n) => n.to_string(),
                Err(e) => e.to_string(),
            })
            .collect()
            .await;
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], "1");
        assert!(
            out[1].contains("expired"),
            "other errors still back off: {out:?}"
        );
        assert_eq!(out[2], "2");
    }
}
