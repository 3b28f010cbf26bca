//! The token each forwarded request carries, per subject mode: a static Civic token from a file,
//! or an exchanged token for the subject in a file or in a request header.
//!
//! Also the two things that depend on the mode: readiness, and (file mode) a warmer task that
//! mints the first token at start and keeps it fresh even without traffic.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::cache::{self, CacheError, CachedToken, EXCHANGE_BACKOFF, Key, TokenCache};
use crate::config::{Config, SubjectMode};
use crate::exchange::{ClientCredentials, Exchange, ExchangeRequest};
use crate::metrics::Metrics;
use crate::profiles::{RouteId, Routes};
use crate::secret::Secret;
use crate::subject::{self, FileValue, SubjectError, WatchedFile};

/// The warmer looks at the subject and secret files at least this often.
const WARMER_MAX_SLEEP: Duration = Duration::from_secs(5);

/// Why a request gets no token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TokenError {
    /// No subject token (file unreadable, header missing…).
    #[error(transparent)]
    Subject(SubjectError),
    /// The client secret file is unreadable.
    #[error(transparent)]
    Secret(SubjectError),
    /// The static token file is unreadable or holds an unusable token.
    #[error(transparent)]
    Static(SubjectError),
    /// The static token cannot go into a header.
    #[error("the access token file holds a value that is not a valid header value")]
    StaticMalformed,
    /// The exchange failed (possibly earlier: in backoff).
    #[error(transparent)]
    Exchange(CacheError),
}

impl TokenError {
    /// Low-cardinality label.
    pub fn category(&self) -> &'static str {
        match self {
            TokenError::Subject(e) => e.category(),
            TokenError::Secret(_) => "secret_unreadable",
            TokenError::Static(_) => "static_token_unreadable",
            TokenError::StaticMalformed => "static_token_malformed",
            TokenError::Exchange(e) => e.error.category(),
        }
    }
}

/// A token for one request, and what is needed to replace it if the hub rejects it.
#[derive(Debug, Clone)]
pub struct Token {
    /// `Bearer <token>`.
    pub bearer: HeaderValue,
    cached: Option<Exchanged>,
}

#[derive(Debug, Clone)]
struct Exchanged {
    route: RouteId,
    key: Key,
    token: Arc<CachedToken>,
    subject: Secret,
}

impl Token {
    /// Whether a fresh token can be had after the hub rejected this one (exchange modes).
    pub fn renewable(&self) -> bool {
        self.cached.is_some()
    }
}

/// Readiness of the token source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// A token can be served.
    Ready,
    /// Why not (safe to show: no secret).
    NotReady(String),
}

struct Exchanging<E> {
    subject: SubjectSource,
    client_id: String,
    secret: WatchedFile,
    token_url: String,
    subject_token_type: String,
    routes: Arc<Routes>,
    lock_profile: bool,
    expires_in: Option<u32>,
    scope: Option<String>,
    cache: TokenCache<E>,
    /// File mode, per route: the key for (subject generation, secret generation), hashed once
    /// per change.
    key_memo: Vec<Mutex<Option<(u64, u64, Key)>>>,
}

enum SubjectSource {
    File(WatchedFile),
    Header(HeaderName),
}

struct Static {
    file: WatchedFile,
    memo: Mutex<Option<(u64, HeaderValue)>>,
}

enum Mode<E> {
    Static(Box<Static>),
    Exchange(Box<Exchanging<E>>),
}

/// Gives each forwarded request its token.
pub struct TokenSource<E> {
    mode: Mode<E>,
    routes: Arc<Routes>,
}

impl<E> std::fmt::Debug for TokenSource<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::Static(_) => "static",
            Mode::Exchange(x) => match x.subject {
                SubjectSource::File(_) => "file",
                SubjectSource::Header(_) => "header",
            },
        };
        f.debug_struct("TokenSource").field("mode", &mode).finish()
    }
}

impl<E: Exchange> TokenSource<E> {
    /// Builds the source for `config`'s subject mode, exchanging through `exchanger`.
    pub fn new(config: &Config, exchanger: Arc<E>, metrics: Arc<Metrics>) -> Self {
        let routes = Arc::new(Routes::new(config.profile, &config.profiles));
        let (subject, credentials, capacity) = match &config.mode {
            SubjectMode::Static { path } => {
                return Self {
                    mode: Mode::Static(Box::new(Static {
                        file: WatchedFile::new("access token", path),
                        memo: Mutex::new(None),
                    })),
                    routes,
                };
            }
            SubjectMode::File { path, credentials } => (
                SubjectSource::File(WatchedFile::new("subject token", path)),
                credentials,
                routes.len(),
            ),
            // Each subject may hold a token per profile.
            SubjectMode::Header { name, credentials } => (
                SubjectSource::Header(name.clone()),
                credentials,
                config.max_cached_subjects.saturating_mul(routes.len()),
            ),
        };
        Self {
            routes: routes.clone(),
            mode: Mode::Exchange(Box::new(Exchanging {
                subject,
                client_id: credentials.client_id.clone(),
                secret: WatchedFile::new("client secret", &credentials.secret_file),
                token_url: config.token_url.to_string(),
                subject_token_type: config.subject_token_type.clone(),
                key_memo: routes.iter().map(|_| Mutex::new(None)).collect(),
                routes,
                lock_profile: config.profile_lock,
                expires_in: config.token_ttl_seconds,
                scope: config.scope.clone(),
                cache: TokenCache::new(exchanger, capacity, EXCHANGE_BACKOFF, metrics),
            })),
        }
    }

    /// The profiles served: which paths exist and what each locks to.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The token for a request to `route` with these headers.
    pub async fn token(&self, headers: &HeaderMap, route: RouteId) -> Result<Token, TokenError> {
        match &self.mode {
            Mode::Static(s) => s.token(),
            Mode::Exchange(x) => x.token(headers, route).await,
        }
    }

    /// Drops a token the hub rejected, so the next [`token`](Self::token) exchanges again.
    pub fn reject(&self, token: &Token) {
        if let (Mode::Exchange(x), Some(cached)) = (&self.mode, &token.cached) {
            x.cache.invalidate(&cached.key, &cached.token);
        }
    }

    /// Drops a rejected token and gets a fresh one for the same subject (one exchange, shared
    /// with any concurrent renewals).
    pub async fn renew(&self, rejected: &Token) -> Result<Token, TokenError> {
        self.reject(rejected);
        match (&self.mode, &rejected.cached) {
            (Mode::Exchange(x), Some(cached)) => match &x.subject {
                SubjectSource::File(_) => x.token(&HeaderMap::new(), cached.route).await,
                SubjectSource::Header(_) => {
                    let secret = x.secret.current().map_err(TokenError::Secret)?.value;
                    x.fetch(cached.route, cached.key, cached.subject.clone(), secret)
                        .await
                }
            },
            _ => Ok(rejected.clone()),
        }
    }

    /// Ready once a token can be served: a valid exchanged token for every profile (file mode), a readable
    /// token file (static mode), at once (header mode).
    pub fn readiness(&self) -> Readiness {
        match &self.mode {
            Mode::Static(s) => match s.token() {
                Ok(_) => Readiness::Ready,
                Err(e) => Readiness::NotReady(e.to_string()),
            },
            Mode::Exchange(x) => match &x.subject {
                SubjectSource::Header(_) => Readiness::Ready,
                SubjectSource::File(file) => x.file_readiness(file),
            },
        }
    }

    /// Seconds until the current token stops being used, when known.
    pub fn seconds_until_expiry(&self) -> Option<f64> {
        match &self.mode {
            Mode::Static(s) => {
                let value = s.file.current().ok()?;
                let exp = crate::jwt::expiry(value.value.expose())?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_secs_f64();
                Some(exp as f64 - now)
            }
            Mode::Exchange(x) => x.cache.soonest_expiry().map(|d| d.as_secs_f64()),
        }
    }

    /// File mode: mints the first token and keeps it fresh ahead of expiry, also without
    /// traffic, so readiness holds and no request waits. Returns at once in other modes.
    pub async fn run_warmer(self: Arc<Self>) {
        let Mode::Exchange(x) = &self.mode else {
            return;
        };
        let SubjectSource::File(file) = &x.subject else {
            return;
        };
        let mut last_problem: Option<String> = None;
        loop {
            let wake = match self.warm(x, file).await {
                Ok(next) => {
                    if last_problem.take().is_some() {
                        tracing::info!("token available again");
                    }
                    next
                }
                Err(WarmError::Exchange(e)) => {
                    // The cache already logged the exchange failure.
                    last_problem = Some(e.error.category().to_string());
                    e.retry_at
                }
                Err(WarmError::Input(e)) => {
                    let problem = e.to_string();
                    if last_problem.as_deref() != Some(problem.as_str()) {
                        tracing::warn!(error = %problem, "cannot exchange: input file unreadable");
                    }
                    last_problem = Some(problem);
                    Instant::now() + Duration::from_secs(1)
                }
            };
            let now = Instant::now();
            let sleep = wake
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(50), WARMER_MAX_SLEEP);
            tokio::time::sleep(sleep).await;
        }
    }

    /// One warmer pass over every profile: when to look again, or the first failure.
    async fn warm(&self, x: &Exchanging<E>, file: &WatchedFile) -> Result<Instant, WarmError> {
        let mut wake: Option<Instant> = None;
        let mut failure = None;
        for (route, _) in self.routes.iter() {
            let (key, subject, secret) = x.file_inputs(file, route).map_err(WarmError::Input)?;
            let label = &self.routes.get(route).name;
            match x
                .cache
                .prefetch(&key, label, || x.inputs(route, subject.value, secret.value))
                .await
            {
                Ok(next) => wake = Some(wake.map_or(next, |w| w.min(next))),
                Err(e) => {
                    wake = Some(wake.map_or(e.retry_at, |w| w.min(e.retry_at)));
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(mut e) => {
                e.retry_at = wake.unwrap_or(e.retry_at);
                Err(WarmError::Exchange(e))
            }
            None => Ok(wake.unwrap_or_else(|| Instant::now() + WARMER_MAX_SLEEP)),
        }
    }
}

enum WarmError {
    Input(TokenError),
    Exchange(CacheError),
}

impl Static {
    fn token(&self) -> Result<Token, TokenError> {
        let current = self.file.current().map_err(TokenError::Static)?;
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((generation, bearer)) = memo.as_ref()
            && *generation == current.generation
        {
            return Ok(Token {
                bearer: bearer.clone(),
                cached: None,
            });
        }
        let value = current.value.expose();
        let value = match value.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => value[7..].trim_start(),
            _ => value,
        };
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::StaticMalformed);
        }
        let bearer = cache::bearer(value).map_err(|_| TokenError::StaticMalformed)?;
        *memo = Some((current.generation, bearer.clone()));
        Ok(Token {
            bearer,
            cached: None,
        })
    }
}

impl<E: Exchange> Exchanging<E> {
    async fn token(&self, headers: &HeaderMap, route: RouteId) -> Result<Token, TokenError> {
        let (key, subject, secret) = match &self.subject {
            SubjectSource::File(file) => {
                let (key, subject, secret) = self.file_inputs(file, route)?;
                (key, subject.value, secret.value)
            }
            SubjectSource::Header(name) => {
                let subject = subject::from_header(headers, name).map_err(TokenError::Subject)?;
                let secret = self.secret.current().map_err(TokenError::Secret)?.value;
                let (credentials, request) = self.inputs(route, subject.clone(), secret.clone());
                (
                    cache::key(&self.token_url, &credentials, &request),
                    subject,
                    secret,
                )
            }
        };
        self.fetch(route, key, subject, secret).await
    }

    async fn fetch(
        &self,
        route: RouteId,
        key: Key,
        subject: Secret,
        secret: Secret,
    ) -> Result<Token, TokenError> {
        let label = &self.routes.get(route).name;
        let token = self
            .cache
            .get(&key, label, || self.inputs(route, subject.clone(), secret))
            .await
            .map_err(TokenError::Exchange)?;
        Ok(Token {
            bearer: token.bearer.clone(),
            cached: Some(Exchanged {
                route,
                key,
                token,
                subject,
            }),
        })
    }

    /// File mode: current subject and secret, and their key for `route` (hashed once per
    /// change).
    fn file_inputs(
        &self,
        file: &WatchedFile,
        route: RouteId,
    ) -> Result<(Key, FileValue, FileValue), TokenError> {
        let subject = file.current().map_err(TokenError::Subject)?;
        let secret = self.secret.current().map_err(TokenError::Secret)?;
        let mut memo = self.key_memo[route.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((s, c, key)) = memo.as_ref()
            && *s == subject.generation
            && *c == secret.generation
        {
            return Ok((*key, subject, secret));
        }
        let (credentials, request) =
            self.inputs(route, subject.value.clone(), secret.value.clone());
        let key = cache::key(&self.token_url, &credentials, &request);
        *memo = Some((subject.generation, secret.generation, key));
        Ok((key, subject, secret))
    }

    fn inputs(
        &self,
        route: RouteId,
        subject: Secret,
        secret: Secret,
    ) -> (ClientCredentials, ExchangeRequest) {
        (
            ClientCredentials {
                client_id: self.client_id.clone(),
                client_secret: secret,
            },
            ExchangeRequest {
                subject_token: subject,
                subject_token_type: self.subject_token_type.clone(),
                profile: self.routes.get(route).profile,
                lock_profile: self.lock_profile,
                expires_in: self.expires_in,
                scope: self.scope.clone(),
            },
        )
    }

    /// Ready when every profile has a token; otherwise why the first one has none.
    fn file_readiness(&self, file: &WatchedFile) -> Readiness {
        for (route, served) in self.routes.iter() {
            let (key, _, _) = match self.file_inputs(file, route) {
                Ok(inputs) => inputs,
                Err(e) => return Readiness::NotReady(e.to_string()),
            };
            if self.cache.peek(&key).is_some() {
                continue;
            }
            let why = match self.cache.last_error(&key) {
                Some(e) => format!("no token yet: {e}"),
                None => "no token yet: first exchange pending".to_string(),
            };
            return Readiness::NotReady(if self.routes.len() > 1 {
                format!("profile {}: {why}", served.name)
            } else {
                why
            });
        }
        Readiness::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{ExchangeError, ExchangedToken, Lifetime};

    const SUBJECT: &str = "subject-token-a1b2c3d4e5f6";
    const ACCESS: &str = "access-token-9f8e7d6c5b4a";

    struct Fixed;

    impl Exchange for Fixed {
        fn exchange(
            &self,
            _: &ClientCredentials,
            _: &ExchangeRequest,
        ) -> impl std::future::Future<Output = Result<ExchangedToken, ExchangeError>> + Send
        {
            std::future::ready(Ok(ExchangedToken {
                access_token: Secret::new(ACCESS),
                issued_token_type: None,
                expires_in: Some(3600),
                received_at: Instant::now(),
                lifetime: Lifetime {
                    refresh_after: Duration::from_secs(1200),
                    expires_after: Duration::from_secs(3570),
                },
            }))
        }
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "civic-sidecar-token-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn source(vars: &[(&str, String)]) -> TokenSource<Fixed> {
        let env: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let config = Config::parse(["civic-sidecar"], &env).unwrap();
        TokenSource::new(&config, Arc::new(Fixed), Arc::new(Metrics::new()))
    }

    fn assert_redacted(text: &str) {
        for secret in [SUBJECT, ACCESS, "client-s3cret"] {
            assert!(!text.contains(secret), "Debug shows a secret: {text}");
        }
    }

    #[tokio::test]
    async fn debug_of_tokens_and_sources_redacts_every_secret() {
        use crate::contract as c;
        let d = dir();
        std::fs::write(d.join("subject"), SUBJECT).unwrap();
        std::fs::write(d.join("secret"), "client-s3cret").unwrap();
        std::fs::write(d.join("access"), ACCESS).unwrap();
        let path = |n: &str| d.join(n).display().to_string();

        let exchanging = source(&[
            (c::ENV_CLIENT_ID, "client-1".into()),
            (c::ENV_CLIENT_SECRET_FILE, path("secret")),
            (c::ENV_SUBJECT_TOKEN_FILE, path("subject")),
        ]);
        let token = exchanging
            .token(&HeaderMap::new(), RouteId::DEFAULT)
            .await
            .unwrap();
        assert_eq!(token.bearer.to_str().unwrap(), format!("Bearer {ACCESS}"));
        assert_redacted(&format!("{token:?} {token:#?} {exchanging:?}"));

        let fixed = source(&[(c::ENV_ACCESS_TOKEN_FILE, path("access"))]);
        let token = fixed
            .token(&HeaderMap::new(), RouteId::DEFAULT)
            .await
            .unwrap();
        assert_eq!(token.bearer.to_str().unwrap(), format!("Bearer {ACCESS}"));
        assert_redacted(&format!("{token:?} {token:#?} {fixed:?}"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
