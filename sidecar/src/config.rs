//! Configuration from flags and `CIVIC_*` environment variables (the operator ↔ sidecar
//! contract), validated into a [`Config`].
//!
//! Parsing goes through [`EnvSource`], so tests pass a map instead of touching the process
//! environment. Every error names the setting it is about, in one line.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use http::HeaderName;
use url::Url;
use uuid::Uuid;

use crate::contract::*;
use crate::guard::{OriginPolicy, is_loopback_host};
use crate::profiles::NamedProfile;

/// Where configuration values come from besides the command line.
pub trait EnvSource {
    /// The value of an environment variable, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl EnvSource for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string())
    }
}

/// Command-line flags; each also reads its `CIVIC_*` variable. Values are validated in
/// [`Config::from_cli`], not by clap, so every error names its setting the same way.
#[derive(Parser, Debug)]
#[command(
    name = "civic-sidecar",
    version,
    about = "Localhost proxy to the Civic MCP hub: exchanges a workload identity for a \
             profile-locked Civic token (RFC 8693) and forwards /hub/mcp with it.",
    after_help = "Exactly one subject mode: --subject-token-file, --subject-header or \
                  --access-token-file. The first two need --client-id and --client-secret-file."
)]
struct Cli {
    /// Proxy listener (loopback only); the workload calls http://<addr>/hub/mcp.
    #[arg(long, env = ENV_LISTEN_ADDR, default_value = DEFAULT_LISTEN_ADDR, value_name = "ADDR")]
    listen_addr: String,
    /// Admin listener: /livez, /readyz, /metrics.
    #[arg(long, env = ENV_ADMIN_ADDR, default_value = DEFAULT_ADMIN_ADDR, value_name = "ADDR")]
    admin_addr: String,
    /// Civic MCP hub URL requests are forwarded to (https, or http on loopback).
    #[arg(long, env = ENV_HUB_URL, default_value = DEFAULT_HUB_URL, value_name = "URL")]
    hub_url: String,
    /// Civic Auth token endpoint (https, or http on loopback).
    #[arg(long, env = ENV_TOKEN_URL, default_value = DEFAULT_TOKEN_URL, value_name = "URL")]
    token_url: String,
    /// Civic Auth client ID (exchange modes).
    #[arg(long, env = ENV_CLIENT_ID, value_name = "ID")]
    client_id: Option<String>,
    /// File holding the Civic Auth client secret, re-read when it changes (exchange modes).
    #[arg(long, env = ENV_CLIENT_SECRET_FILE, value_name = "PATH")]
    client_secret_file: Option<String>,
    /// Profile (toolkit) UUID, sent as civic_profile and in the profile header.
    #[arg(long, env = ENV_PROFILE_ID, value_name = "UUID")]
    profile_id: Option<String>,
    /// Named extra profiles, name=UUID pairs separated by commas, each served on
    /// /profiles/<name>/hub/mcp with its own token (exchange modes).
    #[arg(long, env = ENV_PROFILES, value_name = "LIST")]
    profiles: Option<String>,
    /// Lock exchanged tokens to the profile (civic_profile in the exchange).
    #[arg(long, env = ENV_PROFILE_LOCK, default_value = "true", value_name = "BOOL")]
    profile_lock: String,
    /// Subject mode "file": exchange the token in this file (a projected service-account token).
    #[arg(long, env = ENV_SUBJECT_TOKEN_FILE, value_name = "PATH")]
    subject_token_file: Option<String>,
    /// Subject mode "header": exchange the token the workload sends in this request header.
    #[arg(long, env = ENV_SUBJECT_HEADER, value_name = "NAME")]
    subject_header: Option<String>,
    /// Subject mode "static": use the Civic access token in this file as is (no exchange).
    #[arg(long, env = ENV_ACCESS_TOKEN_FILE, value_name = "PATH")]
    access_token_file: Option<String>,
    /// RFC 8693 subject_token_type.
    #[arg(long, env = ENV_SUBJECT_TOKEN_TYPE, default_value = DEFAULT_SUBJECT_TOKEN_TYPE, value_name = "URN")]
    subject_token_type: String,
    /// Requested token lifetime (expires_in), seconds; unset: Civic Auth's default.
    #[arg(long, env = ENV_TOKEN_TTL_SECONDS, value_name = "SECONDS")]
    token_ttl_seconds: Option<String>,
    /// Requested scope (space-delimited); unset: Civic Auth's default scopes.
    #[arg(long, env = ENV_SCOPE, value_name = "SCOPE")]
    scope: Option<String>,
    /// Header carrying the profile UUID to the hub.
    #[arg(long, env = ENV_PROFILE_HEADER, default_value = DEFAULT_PROFILE_HEADER, value_name = "NAME")]
    profile_header: String,
    /// Extra PEM CA certificates to trust for the hub and token endpoint.
    #[arg(long, env = ENV_CA_FILE, value_name = "PATH")]
    ca_file: Option<String>,
    /// Largest request body forwarded, bytes; larger ones get 413.
    #[arg(long, env = ENV_MAX_BODY_BYTES, default_value_t = DEFAULT_MAX_BODY_BYTES.to_string(), value_name = "BYTES")]
    max_body_bytes: String,
    /// Allowed Origin values, comma-separated: `loopback`, `*`, `null` or scheme://host[:port].
    #[arg(long, env = ENV_ALLOWED_ORIGINS, default_value = DEFAULT_ALLOWED_ORIGINS, value_name = "LIST")]
    allowed_origins: String,
    /// How long open streams may run after SIGTERM, seconds.
    #[arg(long, env = ENV_SHUTDOWN_GRACE_SECONDS, default_value_t = DEFAULT_SHUTDOWN_GRACE_SECONDS.to_string(), value_name = "SECONDS")]
    shutdown_grace_seconds: String,
    /// Timeout of one token exchange, seconds (1-15).
    #[arg(long, env = ENV_EXCHANGE_TIMEOUT_SECONDS, default_value_t = DEFAULT_EXCHANGE_TIMEOUT_SECONDS.to_string(), value_name = "SECONDS")]
    exchange_timeout_seconds: String,
    /// Most subjects with a cached token in header mode (least recently used are evicted).
    #[arg(long, env = ENV_MAX_CACHED_SUBJECTS, default_value_t = DEFAULT_MAX_CACHED_SUBJECTS.to_string(), value_name = "N")]
    max_cached_subjects: String,
    /// Runtime worker threads; 1 runs everything on a single thread.
    #[arg(long, env = ENV_WORKER_THREADS, default_value_t = DEFAULT_WORKER_THREADS.to_string(), value_name = "N")]
    worker_threads: String,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `civic_sidecar=debug`).
    #[arg(long, env = ENV_LOG, default_value = DEFAULT_LOG, value_name = "FILTER")]
    log: String,
    /// Log format: json or text.
    #[arg(long, env = ENV_LOG_FORMAT, default_value = DEFAULT_LOG_FORMAT, value_name = "FORMAT")]
    log_format: String,
}

/// How the sidecar gets the token it sends to the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectMode {
    /// Exchange the token in a file (re-read when it changes).
    File {
        /// The subject token file (e.g. a projected service-account token).
        path: PathBuf,
        /// Client credentials for the exchange.
        credentials: CredentialsConfig,
    },
    /// Exchange the token each request carries in this header (per-user).
    Header {
        /// The request header carrying the subject token (consumed, never forwarded).
        name: HeaderName,
        /// Client credentials for the exchange.
        credentials: CredentialsConfig,
    },
    /// Send the Civic token in this file as is.
    Static {
        /// The file holding the Civic access token.
        path: PathBuf,
    },
}

impl SubjectMode {
    /// `file`, `header` or `static`.
    pub fn name(&self) -> &'static str {
        match self {
            SubjectMode::File { .. } => "file",
            SubjectMode::Header { .. } => "header",
            SubjectMode::Static { .. } => "static",
        }
    }
}

/// Client credentials as configured: the secret stays in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialsConfig {
    /// Civic Auth client ID.
    pub client_id: String,
    /// File holding the client secret (re-read when it changes).
    pub secret_file: PathBuf,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, fields flattened (`message`, `addr`…).
    Json,
    /// Human-readable `key=value` lines.
    Text,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Proxy listener (loopback only).
    pub listen_addr: SocketAddr,
    /// Admin listener.
    pub admin_addr: SocketAddr,
    /// Hub URL requests are forwarded to.
    pub hub_url: Url,
    /// Civic Auth token endpoint.
    pub token_url: Url,
    /// How the token is obtained.
    pub mode: SubjectMode,
    /// Profile UUID.
    pub profile: Option<Uuid>,
    /// Named extra profiles, each on its own path with its own token.
    pub profiles: Vec<NamedProfile>,
    /// Send `civic_profile` in exchanges (and strip profile query parameters).
    pub profile_lock: bool,
    /// Header carrying the profile UUID to the hub.
    pub profile_header: HeaderName,
    /// RFC 8693 `subject_token_type`.
    pub subject_token_type: String,
    /// Requested `expires_in`.
    pub token_ttl_seconds: Option<u32>,
    /// Requested `scope`.
    pub scope: Option<String>,
    /// Contents of `CIVIC_CA_FILE`, read and checked at start.
    pub ca_pem: Option<Vec<u8>>,
    /// Largest request body forwarded.
    pub max_body_bytes: u64,
    /// Origins allowed to call the proxy.
    pub allowed_origins: OriginPolicy,
    /// How long open streams may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// Timeout of one exchange (≤ 15 s).
    pub exchange_timeout: Duration,
    /// Cache bound in header mode.
    pub max_cached_subjects: usize,
    /// Runtime worker threads (1: a single-threaded runtime).
    pub worker_threads: usize,
    /// `tracing` filter.
    pub log_filter: String,
    /// Log output format.
    pub log_format: LogFormat,
}

/// Why the configuration was not accepted (or help was asked for).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a bad value.
    #[error("invalid {env} (--{flag}): {reason}")]
    Invalid {
        /// The environment variable.
        env: &'static str,
        /// The flag, without `--`.
        flag: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The settings do not fit together.
    #[error("invalid configuration: {0}")]
    Conflict(String),
    /// The command line itself is wrong (unknown flag…).
    #[error("{0}")]
    Usage(String),
    /// `--help` or `--version`: not an error, the text to print.
    #[error("{0}")]
    Info(String),
}

impl ConfigError {
    /// Low-cardinality label.
    pub fn category(&self) -> &'static str {
        match self {
            ConfigError::Invalid { .. } => "invalid_setting",
            ConfigError::Conflict(_) => "conflicting_settings",
            ConfigError::Usage(_) => "usage",
            ConfigError::Info(_) => "info",
        }
    }
}

fn invalid(env: &'static str, flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        env,
        flag,
        reason: reason.into(),
    }
}

/// The environment variable and flag of every setting, for prepending env values as flags.
const SETTINGS: &[(&str, &str)] = &[
    (ENV_LISTEN_ADDR, "listen-addr"),
    (ENV_ADMIN_ADDR, "admin-addr"),
    (ENV_HUB_URL, "hub-url"),
    (ENV_TOKEN_URL, "token-url"),
    (ENV_CLIENT_ID, "client-id"),
    (ENV_CLIENT_SECRET_FILE, "client-secret-file"),
    (ENV_PROFILE_ID, "profile-id"),
    (ENV_PROFILES, "profiles"),
    (ENV_PROFILE_LOCK, "profile-lock"),
    (ENV_SUBJECT_TOKEN_FILE, "subject-token-file"),
    (ENV_SUBJECT_HEADER, "subject-header"),
    (ENV_ACCESS_TOKEN_FILE, "access-token-file"),
    (ENV_SUBJECT_TOKEN_TYPE, "subject-token-type"),
    (ENV_TOKEN_TTL_SECONDS, "token-ttl-seconds"),
    (ENV_SCOPE, "scope"),
    (ENV_PROFILE_HEADER, "profile-header"),
    (ENV_CA_FILE, "ca-file"),
    (ENV_MAX_BODY_BYTES, "max-body-bytes"),
    (ENV_ALLOWED_ORIGINS, "allowed-origins"),
    (ENV_SHUTDOWN_GRACE_SECONDS, "shutdown-grace-seconds"),
    (ENV_EXCHANGE_TIMEOUT_SECONDS, "exchange-timeout-seconds"),
    (ENV_MAX_CACHED_SUBJECTS, "max-cached-subjects"),
    (ENV_WORKER_THREADS, "worker-threads"),
    (ENV_LOG, "log"),
    (ENV_LOG_FORMAT, "log-format"),
];

/// Headers the profile or subject header may not be: the proxy owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "accept",
    "accept-encoding",
    "user-agent",
    "origin",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
];

impl Config {
    /// Parses the process's arguments and environment.
    pub fn from_process() -> Result<Self, ConfigError> {
        Self::parse(std::env::args_os(), &ProcessEnv)
    }

    /// Parses `args` (program name first) with environment values from `env`. Flags win over
    /// environment variables; empty variables count as unset.
    pub fn parse<I, T>(args: I, env: &dyn EnvSource) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args = args.into_iter().map(Into::into);
        let program = args.next().unwrap_or_else(|| "civic-sidecar".into());
        let user_args: Vec<OsString> = args.collect();

        // The command with `env` attributes is what `--help` shows; it reads the process
        // environment itself, so for parsing proper its env lookups are switched off and the
        // given source is fed in as leading flags (later, explicit flags override them).
        if user_args
            .iter()
            .any(|a| matches!(a.to_str(), Some("-h" | "--help" | "-V" | "--version")))
        {
            return match Cli::command()
                .try_get_matches_from(std::iter::once(program).chain(user_args))
            {
                Err(e) => Err(clap_error(e)),
                Ok(_) => Err(ConfigError::Usage("unexpected help parse".into())),
            };
        }
        let command = Cli::command()
            .mut_args(|a| a.env(None::<&str>))
            .args_override_self(true);
        let mut full: Vec<OsString> = vec![program];
        for (var, flag) in SETTINGS {
            if let Some(value) = env.var(var).filter(|v| !v.is_empty()) {
                full.push(format!("--{flag}={value}").into());
            }
        }
        full.extend(user_args);
        let matches = command.try_get_matches_from(full).map_err(clap_error)?;
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).map_err(clap_error)?;
        Self::from_cli(cli)
    }

    fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let listen_addr: SocketAddr = cli
            .listen_addr
            .parse()
            .map_err(|_| invalid(ENV_LISTEN_ADDR, "listen-addr", "not an IP:port address"))?;
        if !listen_addr.ip().is_loopback() {
            return Err(invalid(
                ENV_LISTEN_ADDR,
                "listen-addr",
                "must be a loopback address (127.0.0.1 or [::1]): the proxy adds credentials",
            ));
        }
        let admin_addr: SocketAddr = cli
            .admin_addr
            .parse()
            .map_err(|_| invalid(ENV_ADMIN_ADDR, "admin-addr", "not an IP:port address"))?;
        if admin_addr == listen_addr && listen_addr.port() != 0 {
            return Err(ConfigError::Conflict(format!(
                "{ENV_ADMIN_ADDR} and {ENV_LISTEN_ADDR} are the same address"
            )));
        }
        let hub_url = parse_url(&cli.hub_url, ENV_HUB_URL, "hub-url")?;
        if hub_url.query().is_some() {
            return Err(invalid(
                ENV_HUB_URL,
                "hub-url",
                "must not have a query string",
            ));
        }
        let token_url = parse_url(&cli.token_url, ENV_TOKEN_URL, "token-url")?;

        let profile = non_empty(cli.profile_id.clone())
            .map(|p| parse_uuid(&p))
            .transpose()?;
        let profiles = non_empty(cli.profiles.clone())
            .map(|list| {
                crate::profiles::parse(&list).map_err(|e| invalid(ENV_PROFILES, "profiles", e))
            })
            .transpose()?
            .unwrap_or_default();
        let profile_lock = parse_bool(&cli.profile_lock)
            .ok_or_else(|| invalid(ENV_PROFILE_LOCK, "profile-lock", "must be true or false"))?;
        let profile_header =
            parse_header_name(&cli.profile_header, ENV_PROFILE_HEADER, "profile-header")?;
        if profile_header == http::header::AUTHORIZATION {
            return Err(invalid(
                ENV_PROFILE_HEADER,
                "profile-header",
                "must not be Authorization",
            ));
        }

        let mode = Self::subject_mode(&cli)?;
        if !profiles.is_empty() && matches!(mode, SubjectMode::Static { .. }) {
            return Err(ConfigError::Conflict(format!(
                "{ENV_PROFILES} needs an exchange mode: a static token cannot be locked to \
                 several profiles"
            )));
        }
        if let SubjectMode::Header { name, .. } = &mode
            && *name == profile_header
        {
            return Err(ConfigError::Conflict(format!(
                "{ENV_SUBJECT_HEADER} and {ENV_PROFILE_HEADER} name the same header"
            )));
        }

        let subject_token_type = cli.subject_token_type.trim().to_string();
        if !subject_token_type.starts_with("urn:")
            || !subject_token_type.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                ENV_SUBJECT_TOKEN_TYPE,
                "subject-token-type",
                "must be a URN such as urn:ietf:params:oauth:token-type:access_token",
            ));
        }
        let token_ttl_seconds = non_empty(cli.token_ttl_seconds)
            .map(|t| {
                t.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=86_400).contains(n))
                    .ok_or_else(|| {
                        invalid(
                            ENV_TOKEN_TTL_SECONDS,
                            "token-ttl-seconds",
                            "must be 1-86400 seconds",
                        )
                    })
            })
            .transpose()?;
        let scope = non_empty(cli.scope.map(|s| s.trim().to_string()));
        if let Some(scope) = &scope
            && !scope
                .bytes()
                .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'))
        {
            return Err(invalid(
                ENV_SCOPE,
                "scope",
                "must be space-separated printable scope tokens",
            ));
        }

        let ca_pem = non_empty(cli.ca_file)
            .map(|path| {
                let pem = std::fs::read(&path).map_err(|e| {
                    invalid(ENV_CA_FILE, "ca-file", format!("cannot read {path}: {e}"))
                })?;
                crate::tls::parse_pem_certs(&pem)
                    .map_err(|e| invalid(ENV_CA_FILE, "ca-file", e.to_string()))?;
                Ok(pem)
            })
            .transpose()?;

        let max_body_bytes =
            parse_number::<u64>(&cli.max_body_bytes, 1, 1 << 30).ok_or_else(|| {
                invalid(
                    ENV_MAX_BODY_BYTES,
                    "max-body-bytes",
                    "must be 1 to 1073741824 bytes",
                )
            })?;
        let allowed_origins = OriginPolicy::parse(&cli.allowed_origins)
            .map_err(|e| invalid(ENV_ALLOWED_ORIGINS, "allowed-origins", e))?;
        let shutdown_grace = parse_number::<u64>(&cli.shutdown_grace_seconds, 0, 3600)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                invalid(
                    ENV_SHUTDOWN_GRACE_SECONDS,
                    "shutdown-grace-seconds",
                    "must be 0-3600 seconds",
                )
            })?;
        let exchange_timeout = parse_number::<u64>(
            &cli.exchange_timeout_seconds,
            1,
            MAX_EXCHANGE_TIMEOUT_SECONDS,
        )
        .map(Duration::from_secs)
        .ok_or_else(|| {
            invalid(
                ENV_EXCHANGE_TIMEOUT_SECONDS,
                "exchange-timeout-seconds",
                format!("must be 1-{MAX_EXCHANGE_TIMEOUT_SECONDS} seconds"),
            )
        })?;
        let max_cached_subjects = parse_number::<usize>(&cli.max_cached_subjects, 1, 1_000_000)
            .ok_or_else(|| {
                invalid(
                    ENV_MAX_CACHED_SUBJECTS,
                    "max-cached-subjects",
                    "must be 1-1000000",
                )
            })?;
        let worker_threads = parse_number::<usize>(&cli.worker_threads, 1, 64)
            .ok_or_else(|| invalid(ENV_WORKER_THREADS, "worker-threads", "must be 1-64"))?;
        let log_filter = cli.log.trim().to_string();
        tracing_subscriber::EnvFilter::try_new(&log_filter)
            .map_err(|e| invalid(ENV_LOG, "log", format!("not a log filter: {e}")))?;
        let log_format = match cli.log_format.trim().to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            _ => {
                return Err(invalid(
                    ENV_LOG_FORMAT,
                    "log-format",
                    "must be json or text",
                ));
            }
        };

        Ok(Config {
            listen_addr,
            admin_addr,
            hub_url,
            token_url,
            mode,
            profile,
            profiles,
            profile_lock,
            profile_header,
            subject_token_type,
            token_ttl_seconds,
            scope,
            ca_pem,
            max_body_bytes,
            allowed_origins,
            shutdown_grace,
            exchange_timeout,
            max_cached_subjects,
            worker_threads,
            log_filter,
            log_format,
        })
    }

    fn subject_mode(cli: &Cli) -> Result<SubjectMode, ConfigError> {
        let file = non_empty(cli.subject_token_file.clone());
        let header = non_empty(cli.subject_header.clone());
        let static_file = non_empty(cli.access_token_file.clone());
        let count = [file.is_some(), header.is_some(), static_file.is_some()]
            .iter()
            .filter(|s| **s)
            .count();
        if count != 1 {
            return Err(ConfigError::Conflict(format!(
                "set exactly one of {ENV_SUBJECT_TOKEN_FILE}, {ENV_SUBJECT_HEADER}, {ENV_ACCESS_TOKEN_FILE} ({count} set)"
            )));
        }
        if let Some(path) = static_file {
            return Ok(SubjectMode::Static { path: path.into() });
        }
        let credentials = Self::credentials(cli)?;
        if let Some(path) = file {
            return Ok(SubjectMode::File {
                path: path.into(),
                credentials,
            });
        }
        let name = parse_header_name(
            header.as_deref().unwrap_or_default(),
            ENV_SUBJECT_HEADER,
            "subject-header",
        )?;
        Ok(SubjectMode::Header { name, credentials })
    }

    fn credentials(cli: &Cli) -> Result<CredentialsConfig, ConfigError> {
        let client_id = non_empty(cli.client_id.clone())
            .map(|c| c.trim().to_string())
            .ok_or_else(|| {
                invalid(
                    ENV_CLIENT_ID,
                    "client-id",
                    "required when exchanging tokens",
                )
            })?;
        // Basic auth over the raw `id:secret`: a colon in the ID would be ambiguous.
        if client_id.contains(':') || !client_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                ENV_CLIENT_ID,
                "client-id",
                "must be printable ASCII without spaces or ':'",
            ));
        }
        let secret_file: PathBuf = non_empty(cli.client_secret_file.clone())
            .ok_or_else(|| {
                invalid(
                    ENV_CLIENT_SECRET_FILE,
                    "client-secret-file",
                    "required when exchanging tokens",
                )
            })?
            .into();
        match std::fs::read_to_string(&secret_file) {
            Ok(s) if !s.trim().is_empty() => {}
            Ok(_) => {
                return Err(invalid(
                    ENV_CLIENT_SECRET_FILE,
                    "client-secret-file",
                    format!("{} is empty", secret_file.display()),
                ));
            }
            Err(e) => {
                return Err(invalid(
                    ENV_CLIENT_SECRET_FILE,
                    "client-secret-file",
                    format!("cannot read {}: {e}", secret_file.display()),
                ));
            }
        }
        Ok(CredentialsConfig {
            client_id,
            secret_file,
        })
    }

    /// The hub's `host[:port]` as the `Host` header should carry it.
    pub fn hub_authority(&self) -> String {
        authority(&self.hub_url)
    }
}

/// `host[:port]` of a URL, the port only when not the scheme's default.
pub fn authority(url: &Url) -> String {
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

fn clap_error(e: clap::Error) -> ConfigError {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            ConfigError::Info(e.render().to_string())
        }
        _ => {
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid command line")
                .trim()
                .trim_start_matches("error: ");
            ConfigError::Usage(format!("invalid command line: {line}"))
        }
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn parse_url(text: &str, env: &'static str, flag: &'static str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim()).map_err(|e| invalid(env, flag, format!("not a URL: {e}")))?;
    let Some(host) = url.host() else {
        return Err(invalid(env, flag, "has no host"));
    };
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&host) => {}
        "http" => {
            return Err(invalid(
                env,
                flag,
                "http:// is allowed only for loopback hosts; use https://",
            ));
        }
        other => return Err(invalid(env, flag, format!("unsupported scheme {other}"))),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(env, flag, "must not carry credentials"));
    }
    if url.fragment().is_some() {
        return Err(invalid(env, flag, "must not have a fragment"));
    }
    Ok(url)
}

fn parse_uuid(text: &str) -> Result<Uuid, ConfigError> {
    let text = text.trim();
    // Only the hyphenated form the CRD documents; `Uuid` alone also takes braces and URNs.
    if text.len() != 36 {
        return Err(invalid(
            ENV_PROFILE_ID,
            "profile-id",
            "must be a UUID (8-4-4-4-12 hex digits)",
        ));
    }
    Uuid::try_parse(text).map_err(|_| {
        invalid(
            ENV_PROFILE_ID,
            "profile-id",
            "must be a UUID (8-4-4-4-12 hex digits)",
        )
    })
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_number<N: std::str::FromStr + PartialOrd>(text: &str, min: N, max: N) -> Option<N> {
    text.trim()
        .parse::<N>()
        .ok()
        .filter(|n| *n >= min && *n <= max)
}

fn parse_header_name(
    text: &str,
    env: &'static str,
    flag: &'static str,
) -> Result<HeaderName, ConfigError> {
    let name = HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| invalid(env, flag, "not a valid HTTP header name"))?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(invalid(
            env,
            flag,
            format!("{name} is managed by the proxy"),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Env {
        vars: HashMap<String, String>,
        _dir: tempdir::Dir,
        secret: String,
    }

    mod tempdir {
        /// A private temp dir removed on drop (no extra crate for it).
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let path = std::env::temp_dir().join(format!(
                    "civic-sidecar-config-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn env() -> Env {
        let dir = tempdir::Dir::new();
        let secret = dir.0.join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let mut vars = HashMap::new();
        vars.insert(ENV_CLIENT_ID.to_string(), "client-1".to_string());
        vars.insert(
            ENV_CLIENT_SECRET_FILE.to_string(),
            secret.display().to_string(),
        );
        vars.insert(
            ENV_SUBJECT_TOKEN_FILE.to_string(),
            dir.0.join("token").display().to_string(),
        );
        Env {
            vars,
            secret: secret.display().to_string(),
            _dir: dir,
        }
    }

    fn parse(env: &Env, args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["civic-sidecar"];
        all.extend_from_slice(args);
        Config::parse(all, &env.vars)
    }

    #[test]
    fn debug_redacts_the_client_secret() {
        let env = env();
        let config = parse(&env, &[]).unwrap();
        let text = format!("{config:?} {config:#?}");
        assert!(text.contains("client-1"), "the client ID is shown: {text}");
        // The config holds the secret file's path, never its contents (read per exchange), and
        // URLs with credentials in them are refused at parse time.
        assert!(
            text.contains(&env.secret),
            "the secret's path is shown: {text}"
        );
        assert!(!text.contains("s3cret"), "the secret is not: {text}");
    }

    fn with(mut env: Env, var: &str, value: &str) -> Env {
        env.vars.insert(var.to_string(), value.to_string());
        env
    }

    fn error_of(env: &Env, args: &[&str]) -> String {
        let err = parse(env, args).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
        text
    }

    #[test]
    fn defaults() {
        let env = env();
        let c = parse(&env, &[]).unwrap();
        assert_eq!(c.listen_addr.to_string(), DEFAULT_LISTEN_ADDR);
        assert_eq!(c.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
        assert_eq!(c.hub_url.as_str(), DEFAULT_HUB_URL);
        assert_eq!(c.token_url.as_str(), DEFAULT_TOKEN_URL);
        assert_eq!(c.hub_authority(), "app.civic.com");
        assert!(c.profile_lock);
        assert_eq!(c.profile, None);
        assert_eq!(c.profile_header.as_str(), DEFAULT_PROFILE_HEADER);
        assert_eq!(c.subject_token_type, DEFAULT_SUBJECT_TOKEN_TYPE);
        assert_eq!(c.max_body_bytes, 4 * 1024 * 1024);
        assert!(c.allowed_origins.loopback && !c.allowed_origins.any);
        assert_eq!(c.exchange_timeout, Duration::from_secs(10));
        assert_eq!(c.worker_threads, 1);
        assert_eq!(c.max_cached_subjects, 1024);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.token_ttl_seconds, None);
        assert_eq!(c.scope, None);
        assert!(matches!(c.mode, SubjectMode::File { .. }));
    }

    #[test]
    fn flags_override_env() {
        let env = with(env(), ENV_LISTEN_ADDR, "127.0.0.1:9000");
        let c = parse(
            &env,
            &["--listen-addr", "127.0.0.1:0", "--admin-addr=127.0.0.1:0"],
        )
        .unwrap();
        assert_eq!(c.listen_addr.port(), 0);
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:0");
        let c = parse(&env, &[]).unwrap();
        assert_eq!(c.listen_addr.port(), 9000);
    }

    #[test]
    fn all_settings_from_env() {
        let mut env = env();
        for (k, v) in [
            (ENV_PROFILE_ID, "7C9E6679-7425-40DE-944B-E07FC1F90AE7"),
            (ENV_PROFILE_LOCK, "false"),
            (ENV_TOKEN_TTL_SECONDS, "900"),
            (ENV_SCOPE, " openid profile "),
            (ENV_PROFILE_HEADER, "X-Civic-Profile"),
            (ENV_HUB_URL, "http://127.0.0.1:5000/hub/mcp"),
            (ENV_TOKEN_URL, "http://localhost:5001/oauth/token"),
            (ENV_MAX_BODY_BYTES, "1024"),
            (ENV_ALLOWED_ORIGINS, "loopback,https://app.example"),
            (ENV_SHUTDOWN_GRACE_SECONDS, "3"),
            (ENV_EXCHANGE_TIMEOUT_SECONDS, "15"),
            (ENV_MAX_CACHED_SUBJECTS, "10"),
            (ENV_WORKER_THREADS, "2"),
            (ENV_LOG, "civic_sidecar=debug"),
            (ENV_LOG_FORMAT, "TEXT"),
            (
                ENV_SUBJECT_TOKEN_TYPE,
                "urn:ietf:params:oauth:token-type:id_token",
            ),
        ] {
            env.vars.insert(k.into(), v.into());
        }
        let c = parse(&env, &[]).unwrap();
        assert_eq!(
            c.profile.unwrap().to_string(),
            "7c9e6679-7425-40de-944b-e07fc1f90ae7"
        );
        assert!(!c.profile_lock);
        assert_eq!(c.token_ttl_seconds, Some(900));
        assert_eq!(c.scope.as_deref(), Some("openid profile"));
        assert_eq!(c.profile_header.as_str(), "x-civic-profile");
        assert_eq!(c.hub_authority(), "127.0.0.1:5000");
        assert_eq!(c.max_body_bytes, 1024);
        assert_eq!(
            c.allowed_origins.exact,
            vec!["https://app.example".to_string()]
        );
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
        assert_eq!(c.exchange_timeout, Duration::from_secs(15));
        assert_eq!(c.max_cached_subjects, 10);
        assert_eq!(c.worker_threads, 2);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(
            c.subject_token_type,
            "urn:ietf:params:oauth:token-type:id_token"
        );
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let env = with(with(env(), ENV_SCOPE, ""), ENV_PROFILE_ID, "");
        let c = parse(&env, &[]).unwrap();
        assert_eq!(c.scope, None);
        assert_eq!(c.profile, None);
    }

    #[test]
    fn subject_modes() {
        let mut env = env();
        env.vars.remove(ENV_SUBJECT_TOKEN_FILE);
        assert!(error_of(&env, &[]).contains("exactly one"));
        env.vars
            .insert(ENV_SUBJECT_HEADER.into(), "Authorization".into());
        let c = parse(&env, &[]).unwrap();
        assert_eq!(
            c.mode,
            SubjectMode::Header {
                name: http::header::AUTHORIZATION,
                credentials: CredentialsConfig {
                    client_id: "client-1".into(),
                    secret_file: env.secret.clone().into()
                }
            }
        );
        env.vars
            .insert(ENV_ACCESS_TOKEN_FILE.into(), "/tmp/x".into());
        assert!(error_of(&env, &[]).contains("(2 set)"));
        env.vars.remove(ENV_SUBJECT_HEADER);
        env.vars.remove(ENV_CLIENT_ID);
        env.vars.remove(ENV_CLIENT_SECRET_FILE);
        let c = parse(&env, &[]).unwrap();
        assert_eq!(
            c.mode,
            SubjectMode::Static {
                path: "/tmp/x".into()
            }
        );
    }

    #[test]
    fn exchange_modes_need_credentials() {
        let mut env = env();
        env.vars.remove(ENV_CLIENT_ID);
        assert!(error_of(&env, &[]).starts_with("invalid CIVIC_CLIENT_ID (--client-id)"));
        let mut env = self::env();
        env.vars.remove(ENV_CLIENT_SECRET_FILE);
        assert!(error_of(&env, &[]).starts_with("invalid CIVIC_CLIENT_SECRET_FILE"));
        let env = with(self::env(), ENV_CLIENT_SECRET_FILE, "/nonexistent/secret");
        assert!(error_of(&env, &[]).starts_with("invalid CIVIC_CLIENT_SECRET_FILE"));
        let env = with(self::env(), ENV_CLIENT_ID, "a:b");
        assert!(error_of(&env, &[]).starts_with("invalid CIVIC_CLIENT_ID"));
    }

    #[test]
    fn every_invalid_setting_is_named() {
        let cases: &[(&str, &str)] = &[
            (ENV_LISTEN_ADDR, "0.0.0.0:8931"),
            (ENV_LISTEN_ADDR, "localhost"),
            (ENV_ADMIN_ADDR, "nope"),
            (ENV_HUB_URL, "http://app.civic.com/hub/mcp"),
            (ENV_HUB_URL, "ftp://127.0.0.1/x"),
            (ENV_HUB_URL, "https://app.civic.com/hub/mcp?profile=x"),
            (ENV_HUB_URL, "https://user:pw@app.civic.com/hub/mcp"),
            (ENV_HUB_URL, "not a url"),
            (ENV_TOKEN_URL, "http://auth.civic.com/oauth/token"),
            (ENV_PROFILE_ID, "not-a-uuid"),
            (ENV_PROFILE_ID, "{7c9e6679-7425-40de-944b-e07fc1f90ae7}"),
            (ENV_PROFILE_LOCK, "maybe"),
            (ENV_TOKEN_TTL_SECONDS, "0"),
            (ENV_TOKEN_TTL_SECONDS, "abc"),
            (ENV_TOKEN_TTL_SECONDS, "86401"),
            (ENV_SCOPE, "a\"b"),
            (ENV_PROFILE_HEADER, "bad header"),
            (ENV_PROFILE_HEADER, "Host"),
            (ENV_PROFILE_HEADER, "authorization"),
            (ENV_CA_FILE, "/nonexistent/ca.pem"),
            (ENV_MAX_BODY_BYTES, "0"),
            (ENV_ALLOWED_ORIGINS, "https://x.example/path"),
            (ENV_SHUTDOWN_GRACE_SECONDS, "-1"),
            (ENV_EXCHANGE_TIMEOUT_SECONDS, "16"),
            (ENV_EXCHANGE_TIMEOUT_SECONDS, "0"),
            (ENV_MAX_CACHED_SUBJECTS, "0"),
            (ENV_WORKER_THREADS, "0"),
            (ENV_LOG, "[[["),
            (ENV_LOG_FORMAT, "xml"),
            (ENV_SUBJECT_TOKEN_TYPE, "access_token"),
        ];
        for (var, value) in cases {
            let env = with(env(), var, value);
            let text = error_of(&env, &[]);
            assert!(text.contains(var), "{var}={value}: {text}");
        }
        let env = with(
            with(env(), ENV_SUBJECT_HEADER, "X-Civic-Profile-Id"),
            ENV_SUBJECT_TOKEN_FILE,
            "",
        );
        assert!(error_of(&env, &[]).contains(ENV_SUBJECT_HEADER));
        let env = with(
            with(self::env(), ENV_SUBJECT_HEADER, "content-length"),
            ENV_SUBJECT_TOKEN_FILE,
            "",
        );
        assert!(error_of(&env, &[]).contains(ENV_SUBJECT_HEADER));
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        let env = env();
        let bad = env._dir.0.join("bad.pem");
        std::fs::write(&bad, "nothing here").unwrap();
        let env = with(env, ENV_CA_FILE, &bad.display().to_string());
        assert!(error_of(&env, &[]).contains(ENV_CA_FILE));
    }

    #[test]
    fn unknown_flag_is_one_line() {
        let env = env();
        let text = error_of(&env, &["--bogus"]);
        assert!(text.contains("--bogus"), "{text}");
    }

    #[test]
    fn help_lists_env_vars_and_defaults() {
        let env = env();
        let Err(ConfigError::Info(help)) = parse(&env, &["--help"]) else {
            panic!("expected help");
        };
        for (var, _) in SETTINGS {
            assert!(help.contains(var), "{var} missing from --help");
        }
        assert!(help.contains(DEFAULT_LISTEN_ADDR));
        assert!(help.contains(DEFAULT_HUB_URL));
        assert!(help.contains("x-civic-profile-id"));
    }
}
