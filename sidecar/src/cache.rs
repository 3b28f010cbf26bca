//! The token cache: one entry per digest of all exchange inputs, single flight per entry,
//! background refresh ahead of expiry, backoff with jitter after failures, bounded size.
//!
//! - **Keys** are SHA-256 digests of every exchange input ([`key`]); the raw subject token is
//!   never a key.
//! - **Single flight**: concurrent callers that find no usable token share one exchange, run as
//!   its own task so it finishes (and is cached) even if every caller goes away.
//! - **No waiting while valid**: past `refresh_at` (a third of the usable lifetime, at most 5
//!   minutes, before `expires_at`; see [`token_lifetime`](crate::exchange::token_lifetime)) the
//!   first caller starts a background refresh and everyone keeps getting the current token until
//!   it is replaced or reaches `expires_at`.
//! - **Failures** back off exponentially with jitter, at least as long as `Retry-After`; a valid
//!   token keeps being served meanwhile. Without one, callers fail fast with the last error until
//!   the backoff ends.
//! - **Bounded**: at most `capacity` entries; the least recently used goes first.

use crate::backoff::{Backoff, Jitter};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use http::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::exchange::{
    ClientCredentials, Exchange, ExchangeError, ExchangeRequest, ExchangedToken,
};
use crate::metrics::Metrics;

/// A cache key: SHA-256 over every exchange input.
pub type Key = [u8; 32];

/// Digest of everything that shapes an exchange: a change in any input is a different token.
pub fn key(token_url: &str, credentials: &ClientCredentials, request: &ExchangeRequest) -> Key {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"civic-sidecar/cache-key/v1");
    field(token_url.as_bytes());
    field(credentials.client_id.as_bytes());
    field(credentials.client_secret.expose().as_bytes());
    field(request.subject_token.expose().as_bytes());
    field(request.subject_token_type.as_bytes());
    let profile = request
        .profile
        .map(|p| p.hyphenated().to_string())
        .unwrap_or_default();
    field(profile.as_bytes());
    field(&[u8::from(request.lock_profile && request.profile.is_some())]);
    field(
        request
            .expires_in
            .map(|t| t.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    field(request.scope.as_deref().unwrap_or_default().as_bytes());
    h.finalize().into()
}

/// A token ready to put on the wire.
#[derive(Debug)]
pub struct CachedToken {
    /// `Bearer <token>`, marked sensitive.
    pub bearer: HeaderValue,
    /// From here on a background refresh is due.
    pub refresh_at: Instant,
    /// From here on the token is not used any more.
    pub expires_at: Instant,
}

impl CachedToken {
    /// Wraps an exchanged token.
    pub fn from_exchanged(token: &ExchangedToken) -> Result<Self, ExchangeError> {
        Ok(Self {
            bearer: bearer(token.access_token.expose())?,
            refresh_at: token.refresh_at(),
            expires_at: token.expires_at(),
        })
    }

    /// Whether the token may still be sent at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

/// `Bearer <token>` as a sensitive header value.
pub fn bearer(token: &str) -> Result<HeaderValue, ExchangeError> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| ExchangeError::Malformed("access token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// No token: the exchange failed, and no new attempt is made before `retry_at`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{error}")]
pub struct CacheError {
    /// What the last exchange for this key answered.
    pub error: ExchangeError,
    /// No new exchange is made before this.
    pub retry_at: Instant,
}

impl CacheError {
    /// How long the caller should wait before trying again (at least 1 s).
    pub fn retry_after(&self) -> Duration {
        let wait = self.retry_at.saturating_duration_since(Instant::now());
        Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            .max(Duration::from_secs(1))
    }
}

/// Backoff of failed exchanges (raised to the server's `Retry-After`): equal jitter, so sidecars
/// that failed together against one Civic Auth spread their retries.
pub const EXCHANGE_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
    jitter: Jitter::Equal,
};

type Flight = Shared<BoxFuture<'static, Result<Arc<CachedToken>, CacheError>>>;

#[derive(Default)]
struct State {
    token: Option<Arc<CachedToken>>,
    inflight: Option<Flight>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<ExchangeError>,
}

struct Entry {
    state: Mutex<State>,
    last_used: AtomicU64,
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The token cache over an exchanger `E`.
pub struct TokenCache<E> {
    exchanger: Arc<E>,
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    capacity: usize,
    clock: AtomicU64,
    backoff: Backoff,
    metrics: Arc<Metrics>,
}

impl<E> std::fmt::Debug for TokenCache<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<E: Exchange> TokenCache<E> {
    /// A cache holding at most `capacity` (≥ 1) tokens.
    pub fn new(
        exchanger: Arc<E>,
        capacity: usize,
        backoff: Backoff,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            exchanger,
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
            backoff,
            metrics,
        }
    }

    /// A usable token for `key`: cached, or from an exchange built by `inputs` (called only when
    /// an exchange starts). Never waits while a valid token exists. `profile` labels the
    /// exchange's metrics.
    pub async fn get<F>(
        &self,
        key: &Key,
        profile: &str,
        inputs: F,
    ) -> Result<Arc<CachedToken>, CacheError>
    where
        F: FnOnce() -> (ClientCredentials, ExchangeRequest),
    {
        let entry = self.entry(key);
        let now = Instant::now();
        let flight = {
            let mut state = entry.lock();
            if let Some(token) = state.token.as_ref().filter(|t| t.valid_at(now)).cloned() {
                self.metrics.cache_hits.inc();
                if now >= token.refresh_at
                    && state.inflight.is_none()
                    && state.retry_at.is_none_or(|r| now >= r)
                {
                    self.metrics.refreshes.inc();
                    tracing::debug!("token refresh started ahead of expiry");
                    // Nobody waits on this flight; its task caches the result.
                    drop(self.start(&entry, &mut state, profile, inputs));
                }
                return Ok(token);
            }
            self.metrics.cache_misses.inc();
            match &state.inflight {
                Some(flight) => flight.clone(),
                None => {
                    if let (Some(retry_at), Some(error)) = (state.retry_at, &state.last_error)
                        && now < retry_at
                    {
                        return Err(CacheError {
                            error: error.clone(),
                            retry_at,
                        });
                    }
                    self.start(&entry, &mut state, profile, inputs)
                }
            }
        };
        flight.await
    }

    /// Like [`get`](Self::get) but for keeping a token warm without traffic: exchanges when there
    /// is no valid token or a refresh is due, and waits for it. Returns when to look again.
    pub async fn prefetch<F>(
        &self,
        key: &Key,
        profile: &str,
        inputs: F,
    ) -> Result<Instant, CacheError>
    where
        F: FnOnce() -> (ClientCredentials, ExchangeRequest),
    {
        let entry = self.entry(key);
        let now = Instant::now();
        let flight = {
            let mut state = entry.lock();
            match (&state.token, &state.inflight) {
                (_, Some(flight)) => flight.clone(),
                (Some(token), None) if now < token.refresh_at => return Ok(token.refresh_at),
                (token, None) => {
                    if let Some(retry_at) = state.retry_at.filter(|r| now < *r) {
                        return match (token, &state.last_error) {
                            (Some(t), _) if t.valid_at(now) => Ok(retry_at),
                            (_, Some(error)) => Err(CacheError {
                                error: error.clone(),
                                retry_at,
                            }),
                            _ => Ok(retry_at),
                        };
                    }
                    if token.as_ref().is_some_and(|t| t.valid_at(now)) {
                        self.metrics.refreshes.inc();
                    }
                    self.start(&entry, &mut state, profile, inputs)
                }
            }
        };
        match flight.await {
            Ok(token) => Ok(token.refresh_at),
            Err(e) => {
                // A failed refresh with the old token still valid is not a failure yet.
                let state = entry.lock();
                match &state.token {
                    Some(t) if t.valid_at(Instant::now()) => Ok(e.retry_at),
                    _ => Err(e),
                }
            }
        }
    }

    /// The cached token for `key` if it is usable now, without touching anything.
    pub fn peek(&self, key: &Key) -> Option<Arc<CachedToken>> {
        let entry = self.lock_entries().get(key).cloned()?;
        let state = entry.lock();
        state
            .token
            .as_ref()
            .filter(|t| t.valid_at(Instant::now()))
            .cloned()
    }

    /// The error of the last failed exchange for `key`, while it is not followed by a success.
    pub fn last_error(&self, key: &Key) -> Option<ExchangeError> {
        let entry = self.lock_entries().get(key).cloned()?;
        let state = entry.lock();
        state.last_error.clone()
    }

    /// Drops `token` from `key`'s entry (the hub rejected it), unless it was already replaced.
    pub fn invalidate(&self, key: &Key, token: &Arc<CachedToken>) {
        let Some(entry) = self.lock_entries().get(key).cloned() else {
            return;
        };
        let mut state = entry.lock();
        if state.token.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) {
            state.token = None;
        }
    }

    /// Seconds until the soonest usable token stops being used, if any is cached.
    pub fn soonest_expiry(&self) -> Option<Duration> {
        let now = Instant::now();
        let entries: Vec<Arc<Entry>> = self.lock_entries().values().cloned().collect();
        entries
            .iter()
            .filter_map(|e| {
                e.lock()
                    .token
                    .as_ref()
                    .filter(|t| t.valid_at(now))
                    .map(|t| t.expires_at - now)
            })
            .min()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock_entries().len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_entries(&self) -> MutexGuard<'_, HashMap<Key, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `key`, created (evicting the least recently used) if needed.
    fn entry(&self, key: &Key) -> Arc<Entry> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.lock_entries();
        if let Some(entry) = entries.get(key) {
            entry.last_used.store(tick, Ordering::Relaxed);
            return entry.clone();
        }
        while entries.len() >= self.capacity {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => entries.remove(&k),
                None => break,
            };
        }
        let entry = Arc::new(Entry {
            state: Mutex::new(State::default()),
            last_used: AtomicU64::new(tick),
        });
        entries.insert(*key, entry.clone());
        self.metrics.cached_tokens.set(entries.len() as i64);
        entry
    }

    /// Starts an exchange for `entry` as its own task; the caller holds the entry's lock.
    fn start<F>(&self, entry: &Arc<Entry>, state: &mut State, profile: &str, inputs: F) -> Flight
    where
        F: FnOnce() -> (ClientCredentials, ExchangeRequest),
    {
        let (credentials, request) = inputs();
        let profile = profile.to_string();
        let exchanger = self.exchanger.clone();
        let metrics = self.metrics.clone();
        let backoff = self.backoff;
        let entry = entry.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = exchanger
                .exchange(&credentials, &request)
                .await
                .and_then(|t| CachedToken::from_exchanged(&t).map(|c| (t, c)));
            let elapsed = started.elapsed();
            metrics.exchange_duration.observe(elapsed.as_secs_f64());
            let mut state = entry.lock();
            state.inflight = None;
            match result {
                Ok((exchanged, cached)) => {
                    metrics.exchanges.with_label_values(&["ok", &profile]).inc();
                    tracing::info!(
                        result = "ok",
                        profile = %profile,
                        duration_ms = elapsed.as_millis() as u64,
                        expires_in = exchanged.expires_in,
                        refresh_in_s = exchanged.lifetime.refresh_after.as_secs(),
                        "token exchange"
                    );
                    let cached = Arc::new(cached);
                    state.token = Some(cached.clone());
                    state.failures = 0;
                    state.retry_at = None;
                    state.last_error = None;
                    Ok(cached)
                }
                Err(error) => {
                    metrics
                        .exchanges
                        .with_label_values(&[error.category(), &profile])
                        .inc();
                    state.failures = state.failures.saturating_add(1);
                    let delay = backoff
                        .delay(state.failures)
                        .max(error.retry_after().unwrap_or_default());
                    let retry_at = Instant::now() + delay;
                    let serving = state
                        .token
                        .as_ref()
                        .is_some_and(|t| t.valid_at(Instant::now()));
                    tracing::warn!(
                        result = error.category(),
                        profile = %profile,
                        duration_ms = elapsed.as_millis() as u64,
                        failures = state.failures,
                        retry_in_ms = delay.as_millis() as u64,
                        still_serving_cached_token = serving,
                        error = %error,
                        "token exchange failed"
                    );
                    state.retry_at = Some(retry_at);
                    state.last_error = Some(error.clone());
                    Err(CacheError { error, retry_at })
                }
            }
        });
        let flight: Flight = async move {
            task.await.unwrap_or_else(|_| {
                Err(CacheError {
                    error: ExchangeError::Client("exchange task failed".into()),
                    retry_at: Instant::now(),
                })
            })
        }
        .boxed()
        .shared();
        state.inflight = Some(flight.clone());
        flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;

    /// Scripted exchanger: answers from a queue (default: a token with `expires_in` =
    /// `lifetime`; 120 s is refreshed after 60 s and sent until 90 s), counts calls, takes
    /// `delay` per call.
    struct Fake {
        calls: AtomicUsize,
        script: Mutex<VecDeque<Result<Duration, ExchangeError>>>,
        lifetime: Duration,
        delay: Duration,
    }

    impl Fake {
        fn new(lifetime: Duration, delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                calls: AtomicUsize::new(0),
                script: Mutex::new(VecDeque::new()),
                lifetime,
                delay,
            })
        }
        fn push(&self, r: Result<Duration, ExchangeError>) {
            self.script.lock().unwrap().push_back(r);
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Exchange for Fake {
        fn exchange(
            &self,
            _: &ClientCredentials,
            _: &ExchangeRequest,
        ) -> impl Future<Output = Result<ExchangedToken, ExchangeError>> + Send {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let scripted = self.script.lock().unwrap().pop_front();
            let lifetime = self.lifetime;
            let delay = self.delay;
            async move {
                tokio::time::sleep(delay).await;
                let raw = scripted.unwrap_or(Ok(lifetime))?;
                let lifetime = crate::exchange::token_lifetime(Some(raw.as_secs()), None, None, 0);
                Ok(ExchangedToken {
                    access_token: Secret::new(format!("token-{n}")),
                    issued_token_type: None,
                    expires_in: None,
                    received_at: Instant::now(),
                    lifetime,
                })
            }
        }
    }

    fn inputs() -> (ClientCredentials, ExchangeRequest) {
        (
            ClientCredentials {
                client_id: "id".into(),
                client_secret: Secret::new("secret"),
            },
            ExchangeRequest {
                subject_token: Secret::new("subject"),
                subject_token_type: "urn:x".into(),
                profile: None,
                lock_profile: true,
                expires_in: None,
                scope: None,
            },
        )
    }

    fn cache(fake: &Arc<Fake>, capacity: usize) -> Arc<TokenCache<Fake>> {
        Arc::new(TokenCache::new(
            fake.clone(),
            capacity,
            EXCHANGE_BACKOFF,
            Arc::new(Metrics::new()),
        ))
    }

    fn token_of(t: &CachedToken) -> &str {
        t.bearer.to_str().unwrap()
    }

    const K: Key = [7; 32];

    #[test]
    fn key_covers_every_input() {
        let (c, r) = inputs();
        let base = key("u", &c, &r);
        assert_eq!(base, key("u", &c, &r));
        let mut variants = vec![key("v", &c, &r)];
        let mut c2 = c.clone();
        c2.client_id = "other".into();
        variants.push(key("u", &c2, &r));
        let mut c2 = c.clone();
        c2.client_secret = Secret::new("rotated");
        variants.push(key("u", &c2, &r));
        let change: [fn(&mut ExchangeRequest); 6] = [
            |r| r.subject_token = Secret::new("subject2"),
            |r| r.subject_token_type = "urn:y".into(),
            |r| r.profile = Some(uuid::Uuid::nil()),
            |r| r.expires_in = Some(60),
            |r| r.scope = Some("openid".into()),
            |r| {
                r.profile = Some(uuid::Uuid::nil());
                r.lock_profile = false
            },
        ];
        for f in change {
            let mut r2 = r.clone();
            f(&mut r2);
            variants.push(key("u", &c, &r2));
        }
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(*v, base, "variant {i}");
        }
        // Length-prefixed: shifting bytes between fields changes the key.
        let mut c2 = c.clone();
        c2.client_id = "i".into();
        c2.client_secret = Secret::new("dsecret");
        assert_ne!(key("u", &c2, &r), base);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousand_concurrent_cold_callers_make_one_exchange() {
        let fake = Fake::new(Duration::from_secs(600), Duration::from_millis(50));
        let cache = cache(&fake, 1);
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get(&K, "default", inputs)
                    .await
                    .map(|t| token_of(&t).to_string())
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "Bearer token-1");
        }
        assert_eq!(fake.calls(), 1);
        // Warm cache: no more exchanges.
        for _ in 0..100 {
            cache.get(&K, "default", inputs).await.unwrap();
        }
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cold_callers_share_one_error() {
        let fake = Fake::new(Duration::from_secs(600), Duration::from_millis(50));
        fake.push(Err(ExchangeError::Rejected {
            status: 401,
            code: "invalid_client".into(),
            description: None,
        }));
        let cache = cache(&fake, 1);
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                cache.get(&K, "default", inputs).await.map(|_| ())
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap().unwrap_err().error.category(),
                "invalid_client"
            );
        }
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn background_refresh_never_blocks() {
        let fake = Fake::new(Duration::from_secs(120), Duration::from_secs(5));
        let cache = cache(&fake, 1);
        let first = cache.get(&K, "default", inputs).await.unwrap();
        assert_eq!(fake.calls(), 1);
        // Before the refresh point (60 s): no refresh.
        tokio::time::advance(Duration::from_secs(59)).await;
        cache.get(&K, "default", inputs).await.unwrap();
        assert_eq!(fake.calls(), 1);
        // Past it: served at once with the old token while the refresh runs (5 s).
        tokio::time::advance(Duration::from_secs(2)).await;
        let started = Instant::now();
        let t = cache.get(&K, "default", inputs).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(Arc::ptr_eq(&t, &first));
        tokio::task::yield_now().await;
        assert_eq!(fake.calls(), 1 + 1);
        let t = cache.get(&K, "default", inputs).await.unwrap();
        assert!(
            Arc::ptr_eq(&t, &first),
            "still the old token during the refresh"
        );
        assert_eq!(fake.calls(), 2, "one refresh only");
        tokio::time::advance(Duration::from_secs(6)).await;
        tokio::task::yield_now().await;
        let t = cache.get(&K, "default", inputs).await.unwrap();
        assert_eq!(token_of(&t), "Bearer token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn outage_serves_valid_token_then_fails_clearly() {
        let fake = Fake::new(Duration::from_secs(120), Duration::ZERO);
        let cache = cache(&fake, 1);
        cache.get(&K, "default", inputs).await.unwrap();
        for _ in 0..50 {
            fake.push(Err(ExchangeError::Unavailable {
                status: 503,
                retry_after: None,
            }));
        }
        // From 60 s to 90 s: refreshes fail, the old token is served every time.
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..28 {
            let t = cache.get(&K, "default", inputs).await.unwrap();
            assert_eq!(token_of(&t), "Bearer token-1");
            tokio::task::yield_now().await;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let refreshes = fake.calls() - 1;
        assert!(
            (2..=10).contains(&refreshes),
            "backoff spaced the refreshes: {refreshes}"
        );
        // After expiry: a clear error, transient (503-worthy), with a retry hint.
        tokio::time::advance(Duration::from_secs(2)).await;
        let err = cache.get(&K, "default", inputs).await.unwrap_err();
        assert!(err.error.is_transient());
        assert!(err.retry_after() >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_honours_retry_after_and_fails_fast_meanwhile() {
        let fake = Fake::new(Duration::from_secs(100), Duration::ZERO);
        fake.push(Err(ExchangeError::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        }));
        let cache = cache(&fake, 1);
        let err = cache.get(&K, "default", inputs).await.unwrap_err();
        assert_eq!(err.error.category(), "rate_limited");
        assert_eq!(err.retry_after(), Duration::from_secs(30));
        // Within Retry-After: no new exchange, same error.
        tokio::time::advance(Duration::from_secs(29)).await;
        let err = cache.get(&K, "default", inputs).await.unwrap_err();
        assert_eq!(err.error.category(), "rate_limited");
        assert_eq!(err.retry_after(), Duration::from_secs(1));
        assert_eq!(fake.calls(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.get(&K, "default", inputs).await.unwrap();
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn expires_then_next_request_exchanges() {
        let fake = Fake::new(Duration::from_secs(10), Duration::ZERO);
        let cache = cache(&fake, 1);
        cache.get(&K, "default", inputs).await.unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        let t = cache.get(&K, "default", inputs).await.unwrap();
        assert_eq!(token_of(&t), "Bearer token-2");
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_forces_a_new_exchange_once() {
        let fake = Fake::new(Duration::from_secs(600), Duration::ZERO);
        let cache = cache(&fake, 1);
        let t1 = cache.get(&K, "default", inputs).await.unwrap();
        cache.invalidate(&K, &t1);
        let t2 = cache.get(&K, "default", inputs).await.unwrap();
        assert_eq!(token_of(&t2), "Bearer token-2");
        // A stale invalidation does not drop the new token.
        cache.invalidate(&K, &t1);
        let t3 = cache.get(&K, "default", inputs).await.unwrap();
        assert!(Arc::ptr_eq(&t2, &t3));
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_with_lru_eviction() {
        let fake = Fake::new(Duration::from_secs(600), Duration::ZERO);
        let cache = cache(&fake, 3);
        for i in 0..3u8 {
            cache.get(&[i; 32], "default", inputs).await.unwrap();
        }
        // Touch 0 so 1 is the least recently used.
        cache.get(&[0; 32], "default", inputs).await.unwrap();
        cache.get(&[9; 32], "default", inputs).await.unwrap();
        assert_eq!(cache.len(), 3);
        assert!(cache.peek(&[1; 32]).is_none());
        assert!(cache.peek(&[0; 32]).is_some());
        assert_eq!(fake.calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn exchange_finishes_even_if_the_caller_goes_away() {
        let fake = Fake::new(Duration::from_secs(600), Duration::from_secs(1));
        let cache = cache(&fake, 1);
        let c = cache.clone();
        let caller = tokio::spawn(async move { c.get(&K, "default", inputs).await.map(|_| ()) });
        tokio::task::yield_now().await;
        caller.abort();
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(cache.peek(&K).is_some());
        cache.get(&K, "default", inputs).await.unwrap();
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn prefetch_keeps_the_token_warm() {
        let fake = Fake::new(Duration::from_secs(120), Duration::ZERO);
        let cache = cache(&fake, 1);
        let next = cache.prefetch(&K, "default", inputs).await.unwrap();
        assert_eq!(fake.calls(), 1);
        assert_eq!(next - Instant::now(), Duration::from_secs(60));
        assert_eq!(cache.prefetch(&K, "default", inputs).await.unwrap(), next);
        assert_eq!(fake.calls(), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        cache.prefetch(&K, "default", inputs).await.unwrap();
        assert_eq!(fake.calls(), 2);
        assert_eq!(token_of(&cache.peek(&K).unwrap()), "Bearer token-2");
    }
}
