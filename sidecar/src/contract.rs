//! The operator ↔ sidecar contract: environment variable names, ports and defaults.
//!
//! The operator renders these into injected pods; the sidecar reads them. Keeping them in one
//! module of the sidecar library means the two can never drift apart.

/// Address of the proxy listener (the workload calls `http://<this>/hub/mcp`).
pub const ENV_LISTEN_ADDR: &str = "CIVIC_LISTEN_ADDR";
/// Address of the admin listener (`/livez`, `/readyz`, `/metrics`).
pub const ENV_ADMIN_ADDR: &str = "CIVIC_ADMIN_ADDR";
/// The Civic MCP hub URL requests are forwarded to.
pub const ENV_HUB_URL: &str = "CIVIC_HUB_URL";
/// The Civic Auth token endpoint (RFC 8693 token exchange).
pub const ENV_TOKEN_URL: &str = "CIVIC_TOKEN_URL";
/// Civic Auth client ID.
pub const ENV_CLIENT_ID: &str = "CIVIC_CLIENT_ID";
/// File holding the Civic Auth client secret (re-read when it changes).
pub const ENV_CLIENT_SECRET_FILE: &str = "CIVIC_CLIENT_SECRET_FILE";
/// Profile (toolkit) UUID.
pub const ENV_PROFILE_ID: &str = "CIVIC_PROFILE_ID";
/// Named extra profiles, `name=uuid` pairs separated by commas; each is served on
/// `/profiles/<name>/hub/mcp` with its own locked token.
pub const ENV_PROFILES: &str = "CIVIC_PROFILES";
/// Whether `civic_profile` is sent in the exchange (locks the token to the profile).
pub const ENV_PROFILE_LOCK: &str = "CIVIC_PROFILE_LOCK";
/// Subject mode "file": exchange the token in this file (a projected service-account token).
pub const ENV_SUBJECT_TOKEN_FILE: &str = "CIVIC_SUBJECT_TOKEN_FILE";
/// Subject mode "header": exchange the token the workload sends in this request header.
pub const ENV_SUBJECT_HEADER: &str = "CIVIC_SUBJECT_HEADER";
/// Subject mode "static": a ready Civic access token in this file, no exchange.
pub const ENV_ACCESS_TOKEN_FILE: &str = "CIVIC_ACCESS_TOKEN_FILE";
/// RFC 8693 `subject_token_type`.
pub const ENV_SUBJECT_TOKEN_TYPE: &str = "CIVIC_SUBJECT_TOKEN_TYPE";
/// Requested token lifetime (`expires_in`), seconds.
pub const ENV_TOKEN_TTL_SECONDS: &str = "CIVIC_TOKEN_TTL_SECONDS";
/// Requested `scope` (space-delimited).
pub const ENV_SCOPE: &str = "CIVIC_SCOPE";
/// Name of the header carrying the profile UUID to the hub.
pub const ENV_PROFILE_HEADER: &str = "CIVIC_PROFILE_HEADER";
/// Log filter and format (tracing `EnvFilter` syntax).
pub const ENV_LOG: &str = "CIVIC_LOG";
/// Log output format: `json` or `text`; unset, `text` when stderr is a terminal, else `json`.
pub const ENV_LOG_FORMAT: &str = "CIVIC_LOG_FORMAT";
/// Extra PEM CA certificates trusted for the hub and token endpoint, besides the webpki roots.
pub const ENV_CA_FILE: &str = "CIVIC_CA_FILE";
/// Largest request body forwarded to the hub, bytes; larger bodies get 413.
pub const ENV_MAX_BODY_BYTES: &str = "CIVIC_MAX_BODY_BYTES";
/// Comma-separated `Origin` allow-list; the keyword `loopback` allows any loopback origin.
pub const ENV_ALLOWED_ORIGINS: &str = "CIVIC_ALLOWED_ORIGINS";
/// How long open streams may run after SIGTERM before the sidecar exits, seconds.
pub const ENV_SHUTDOWN_GRACE_SECONDS: &str = "CIVIC_SHUTDOWN_GRACE_SECONDS";
/// Timeout of one token-exchange call, seconds (at most 15).
pub const ENV_EXCHANGE_TIMEOUT_SECONDS: &str = "CIVIC_EXCHANGE_TIMEOUT_SECONDS";
/// Bound on distinct subjects cached in per-user (header) mode.
pub const ENV_MAX_CACHED_SUBJECTS: &str = "CIVIC_MAX_CACHED_SUBJECTS";
/// Runtime worker threads; 1 runs everything on one thread.
pub const ENV_WORKER_THREADS: &str = "CIVIC_WORKER_THREADS";
/// HTTP version towards the hub: `auto` (ALPN for `https`), `http1` or `h2` (optional).
pub const ENV_HUB_PROTOCOL: &str = "CIVIC_HUB_PROTOCOL";

/// Port of the proxy listener.
pub const PROXY_PORT: u16 = 8931;
/// Port of the admin listener.
pub const ADMIN_PORT: u16 = 8932;
/// Default of [`ENV_LISTEN_ADDR`].
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8931";
/// Default of [`ENV_ADMIN_ADDR`].
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:8932";
/// Default of [`ENV_HUB_URL`].
pub const DEFAULT_HUB_URL: &str = "https://app.civic.com/hub/mcp";
/// Default of [`ENV_TOKEN_URL`].
pub const DEFAULT_TOKEN_URL: &str = "https://auth.civic.com/oauth/token";
/// Default of [`ENV_SUBJECT_TOKEN_TYPE`].
pub const DEFAULT_SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Default of [`ENV_PROFILE_HEADER`].
pub const DEFAULT_PROFILE_HEADER: &str = "x-civic-profile-id";
/// Default of [`ENV_HUB_PROTOCOL`].
pub const DEFAULT_HUB_PROTOCOL: &str = "auto";
/// Default of [`ENV_LOG`].
pub const DEFAULT_LOG: &str = "info";
/// Default of [`ENV_LOG_FORMAT`] when stderr is not a terminal (a pod, a file, a pipe).
pub const DEFAULT_LOG_FORMAT: &str = "json";
/// Default of [`ENV_MAX_BODY_BYTES`]: 4 MiB, the official Python MCP server's own limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;
/// Default of [`ENV_ALLOWED_ORIGINS`]: loopback origins only.
pub const DEFAULT_ALLOWED_ORIGINS: &str = "loopback";
/// Default of [`ENV_SHUTDOWN_GRACE_SECONDS`] (below Kubernetes' default 30 s grace period).
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 20;
/// Default of [`ENV_EXCHANGE_TIMEOUT_SECONDS`].
pub const DEFAULT_EXCHANGE_TIMEOUT_SECONDS: u64 = 10;
/// Largest accepted [`ENV_EXCHANGE_TIMEOUT_SECONDS`] (docs/protocol.md statement 16).
pub const MAX_EXCHANGE_TIMEOUT_SECONDS: u64 = 15;
/// Default of [`ENV_MAX_CACHED_SUBJECTS`].
pub const DEFAULT_MAX_CACHED_SUBJECTS: usize = 1024;
/// Default of [`ENV_WORKER_THREADS`].
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// The only path the proxy forwards.
pub const MCP_PATH: &str = "/hub/mcp";

/// Environment variable the operator sets in every app container.
pub const WORKLOAD_MCP_URL_ENV: &str = "CIVIC_MCP_URL";

/// The URL a workload in an injected pod calls.
pub fn workload_mcp_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}{MCP_PATH}")
}
