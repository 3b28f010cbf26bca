//! Configuration from flags and `CIVIC_*` environment variables (the operator ↔ sidecar
//! contract), validated into a [`Config`].
//!
//! clap's definition of the flags is the one table of settings: flag names, variables, defaults
//! and `--help` come from it, and so do the names in error messages. Per-value checks are clap
//! value parsers; rules across settings come after parsing. Every error names the setting it is
//! about (variable and flag), in one line.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Command, CommandFactory, FromArgMatches, Parser, ValueEnum};
use http::HeaderName;
use url::Url;
use uuid::Uuid;

use crate::contract::*;
use crate::guard::{OriginPolicy, is_loopback_host};
use crate::headers::HOP_BY_HOP;
use crate::profiles::NamedProfile;

/// Command-line flags; each also reads its `CIVIC_*` variable.
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
    #[arg(long, env = ENV_LISTEN_ADDR, default_value = DEFAULT_LISTEN_ADDR, value_name = "ADDR",
          value_parser = socket_addr)]
    listen_addr: SocketAddr,
    /// Admin listener: /livez, /readyz, /metrics.
    #[arg(long, env = ENV_ADMIN_ADDR, default_value = DEFAULT_ADMIN_ADDR, value_name = "ADDR",
          value_parser = socket_addr)]
    admin_addr: SocketAddr,
    /// Civic MCP hub URL requests are forwarded to (https, or http on loopback).
    #[arg(long, env = ENV_HUB_URL, default_value = DEFAULT_HUB_URL, value_name = "URL",
          value_parser = Trimmed(hub_url))]
    hub_url: Url,
    /// Civic Auth token endpoint (https, or http on loopback).
    #[arg(long, env = ENV_TOKEN_URL, default_value = DEFAULT_TOKEN_URL, value_name = "URL",
          value_parser = Trimmed(endpoint_url))]
    token_url: Url,
    /// Civic Auth client ID (exchange modes).
    #[arg(long, env = ENV_CLIENT_ID, value_name = "ID", value_parser = Trimmed(client_id))]
    client_id: Option<String>,
    /// File holding the Civic Auth client secret, re-read when it changes (exchange modes).
    #[arg(long, env = ENV_CLIENT_SECRET_FILE, value_name = "PATH")]
    client_secret_file: Option<PathBuf>,
    /// Profile (toolkit) UUID, sent as civic_profile and in the profile header.
    #[arg(long, env = ENV_PROFILE_ID, value_name = "UUID", value_parser = Trimmed(uuid))]
    profile_id: Option<Uuid>,
    /// Named extra profiles, name=UUID pairs separated by commas, each served on
    /// /profiles/<name>/hub/mcp with its own token (exchange modes).
    #[arg(long, env = ENV_PROFILES, value_name = "LIST", value_parser = profile_list)]
    profiles: Option<ProfileList>,
    /// Lock exchanged tokens to the profile (civic_profile in the exchange).
    #[arg(long, env = ENV_PROFILE_LOCK, default_value = "true", value_name = "BOOL",
          action = ArgAction::Set, value_parser = Trimmed(boolean))]
    profile_lock: bool,
    /// Subject mode "file": exchange the token in this file (a projected service-account token).
    #[arg(long, env = ENV_SUBJECT_TOKEN_FILE, value_name = "PATH")]
    subject_token_file: Option<PathBuf>,
    /// Subject mode "header": exchange the token the workload sends in this request header.
    #[arg(long, env = ENV_SUBJECT_HEADER, value_name = "NAME", value_parser = Trimmed(header_name))]
    subject_header: Option<HeaderName>,
    /// Subject mode "static": use the Civic access token in this file as is (no exchange).
    #[arg(long, env = ENV_ACCESS_TOKEN_FILE, value_name = "PATH")]
    access_token_file: Option<PathBuf>,
    /// RFC 8693 subject_token_type.
    #[arg(long, env = ENV_SUBJECT_TOKEN_TYPE, default_value = DEFAULT_SUBJECT_TOKEN_TYPE,
          value_name = "URN", value_parser = Trimmed(token_type))]
    subject_token_type: String,
    /// Requested token lifetime (expires_in), seconds; unset: Civic Auth's default.
    #[arg(long, env = ENV_TOKEN_TTL_SECONDS, value_name = "SECONDS",
          value_parser = Trimmed(ranged(1u32, 86_400, " seconds")))]
    token_ttl_seconds: Option<u32>,
    /// Requested scope (space-delimited); unset: Civic Auth's default scopes.
    #[arg(long, env = ENV_SCOPE, value_name = "SCOPE", value_parser = Trimmed(scope))]
    scope: Option<String>,
    /// Header carrying the profile UUID to the hub.
    #[arg(long, env = ENV_PROFILE_HEADER, default_value = DEFAULT_PROFILE_HEADER,
          value_name = "NAME", value_parser = Trimmed(profile_header))]
    profile_header: HeaderName,
    /// Extra PEM CA certificates to trust for the hub and token endpoint.
    #[arg(long, env = ENV_CA_FILE, value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Largest request body forwarded, bytes; larger ones get 413.
    #[arg(long, env = ENV_MAX_BODY_BYTES, default_value_t = DEFAULT_MAX_BODY_BYTES,
          value_name = "BYTES",
          value_parser = Trimmed(ranged(1u64, 1 << 30, " bytes")))]
    max_body_bytes: u64,
    /// Allowed Origin values, comma-separated: `loopback`, `*`, `null` or scheme://host[:port].
    #[arg(long, env = ENV_ALLOWED_ORIGINS, default_value = DEFAULT_ALLOWED_ORIGINS,
          value_name = "LIST", value_parser = OriginPolicy::parse)]
    allowed_origins: OriginPolicy,
    /// How long open streams may run after SIGTERM, seconds.
    #[arg(long, env = ENV_SHUTDOWN_GRACE_SECONDS, default_value_t = DEFAULT_SHUTDOWN_GRACE_SECONDS,
          value_name = "SECONDS", value_parser = Trimmed(ranged(0u64, 3600, " seconds")))]
    shutdown_grace_seconds: u64,
    /// Timeout of one token exchange, seconds (1-15).
    #[arg(long, env = ENV_EXCHANGE_TIMEOUT_SECONDS,
          default_value_t = DEFAULT_EXCHANGE_TIMEOUT_SECONDS, value_name = "SECONDS",
          value_parser = Trimmed(ranged(1u64, MAX_EXCHANGE_TIMEOUT_SECONDS, " seconds")))]
    exchange_timeout_seconds: u64,
    /// Most subjects with a cached token in header mode (least recently used are evicted).
    #[arg(long, env = ENV_MAX_CACHED_SUBJECTS, default_value_t = DEFAULT_MAX_CACHED_SUBJECTS,
          value_name = "N", value_parser = Trimmed(ranged(1usize, 1_000_000, "")))]
    max_cached_subjects: usize,
    /// Runtime worker threads; 1 runs everything on a single thread.
    #[arg(long, env = ENV_WORKER_THREADS, default_value_t = DEFAULT_WORKER_THREADS,
          value_name = "N", value_parser = Trimmed(ranged(1usize, 64, "")))]
    worker_threads: usize,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `civic_sidecar=debug`).
    #[arg(long, env = ENV_LOG, default_value = DEFAULT_LOG, value_name = "FILTER",
          value_parser = Trimmed(log_filter))]
    log: String,
    /// Log format: json or text [default: text when stderr is a terminal, else json].
    // Listing the values with their help would switch all of `--help` to the long layout. No
    // clap default: an unset format must stay distinguishable from an explicit `json`.
    #[arg(long, env = ENV_LOG_FORMAT, value_name = "FORMAT",
          value_parser = Trimmed(clap::builder::EnumValueParser::<LogFormat>::new()),
          ignore_case = true, hide_possible_values = true)]
    log_format: Option<LogFormat>,
    /// HTTP version towards the hub: auto, http1 or h2.
    #[arg(long, env = ENV_HUB_PROTOCOL, default_value = DEFAULT_HUB_PROTOCOL, value_name = "PROTOCOL",
          value_parser = Trimmed(clap::builder::EnumValueParser::<HubProtocol>::new()),
          ignore_case = true, hide_possible_values = true)]
    hub_protocol: HubProtocol,
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

/// The HTTP version spoken to the hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum HubProtocol {
    /// `https`: HTTP/2 when the hub's ALPN offers `h2`, else HTTP/1.1; `http`: HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: ALPN `h2` for `https`, prior knowledge (h2c) for a loopback `http` hub.
    H2,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, fields flattened (`message`, `addr`…).
    Json,
    /// Human-readable `key=value` lines.
    Text,
}

impl LogFormat {
    /// The format to log in: the one set, else text for a person at a terminal and JSON
    /// ([`DEFAULT_LOG_FORMAT`]) for everything else, a pod's log collector above all.
    pub fn choose(set: Option<LogFormat>, stderr_is_terminal: bool) -> LogFormat {
        match set {
            Some(format) => format,
            None if stderr_is_terminal => LogFormat::Text,
            None => LogFormat::Json,
        }
    }
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
    /// Log output format as set; `None` leaves it to [`LogFormat::choose`].
    pub log_format: Option<LogFormat>,
    /// HTTP version towards the hub.
    pub hub_protocol: HubProtocol,
}

/// Why the configuration was not accepted (or help was asked for).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a bad value.
    #[error("invalid {env} (--{flag}): {reason}")]
    Invalid {
        /// The environment variable.
        env: String,
        /// The flag, without `--`.
        flag: String,
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

/// The flag (without `--`) clap defines for the setting read from `env`.
fn flag_of(env: &str) -> String {
    Cli::command()
        .get_arguments()
        .find(|a| a.get_env() == Some(OsStr::new(env)))
        .and_then(|a| a.get_long())
        .unwrap_or_default()
        .to_owned()
}

/// A bad value of the setting read from `env`.
fn invalid(env: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        env: env.to_owned(),
        flag: flag_of(env),
        reason: reason.into(),
    }
}

/// `CIVIC_X (--x)`, how a conflict names a setting.
fn named(env: &str) -> String {
    format!("{env} (--{})", flag_of(env))
}

/// Headers the profile or subject header may not be because the proxy owns them: the
/// hop-by-hop ones ([`HOP_BY_HOP`]) and these.
const PROXY_OWNED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
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
    /// Parses the process's arguments and environment. clap reads each setting's variable; an
    /// empty one counts as unset, as a variable rendered from an empty field should.
    pub fn from_process() -> Result<Self, ConfigError> {
        let command = Cli::command().mut_args(|arg| {
            let empty = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.is_empty());
            if empty { arg.env(None::<&str>) } else { arg }
        });
        match Self::from_command(command, std::env::args_os()) {
            // Help lists every variable, empty or not.
            Err(ConfigError::Info(_)) => Self::from_command(Cli::command(), std::env::args_os()),
            other => other,
        }
    }

    /// Parses `args` (program name first) with `CIVIC_*` values from `env` instead of the
    /// process environment, for tests and fuzzing. Each variable becomes its flag, both from
    /// clap's definition, placed before `args` so explicit flags win; empty values count as
    /// unset, as in [`from_process`](Self::from_process).
    pub fn parse<I, T>(args: I, env: &HashMap<String, String>) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args = args.into_iter().map(Into::into);
        let program = args.next().unwrap_or_else(|| "civic-sidecar".into());
        let user_args: Vec<OsString> = args.collect();
        let command = Cli::command();
        let mut full = vec![program.clone()];
        for arg in command.get_arguments() {
            let (Some(var), Some(long)) = (arg.get_env().and_then(OsStr::to_str), arg.get_long())
            else {
                continue;
            };
            if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
                full.push(format!("--{long}={value}").into());
            }
        }
        full.extend(user_args.iter().cloned());
        // `Cli::command()` captured the process environment; drop it so only `env` counts.
        let isolated = command.mut_args(|a| a.env(None::<&str>));
        match Self::from_command(isolated, full) {
            // Help shows each setting's variable, which the isolated command no longer has.
            Err(ConfigError::Info(_)) => {
                Self::from_command(Cli::command(), std::iter::once(program).chain(user_args))
            }
            other => other,
        }
    }

    fn from_command(
        command: Command,
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<Self, ConfigError> {
        // The last of repeated flags wins (and, in `parse`, a flag over a variable's value).
        let matches = command
            .args_override_self(true)
            .try_get_matches_from(args)
            .map_err(clap_error)?;
        let cli = Cli::from_arg_matches(&matches).map_err(clap_error)?;
        Self::from_cli(cli)
    }

    /// The rules across settings; each value was checked on its own by its value parser.
    fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        if !cli.listen_addr.ip().is_loopback() {
            return Err(invalid(
                ENV_LISTEN_ADDR,
                "must be a loopback address (127.0.0.1 or [::1]): the proxy adds credentials",
            ));
        }
        if cli.admin_addr == cli.listen_addr && cli.listen_addr.port() != 0 {
            return Err(ConfigError::Conflict(format!(
                "{} and {} are the same address",
                named(ENV_ADMIN_ADDR),
                named(ENV_LISTEN_ADDR)
            )));
        }

        let mode = Self::subject_mode(&cli)?;
        let profiles = cli.profiles.map(|p| p.0).unwrap_or_default();
        if !profiles.is_empty() && matches!(mode, SubjectMode::Static { .. }) {
            return Err(ConfigError::Conflict(format!(
                "{} needs an exchange mode: a static token cannot be locked to several profiles",
                named(ENV_PROFILES)
            )));
        }
        if let SubjectMode::Header { name, .. } = &mode
            && *name == cli.profile_header
        {
            return Err(ConfigError::Conflict(format!(
                "{} and {} name the same header",
                named(ENV_SUBJECT_HEADER),
                named(ENV_PROFILE_HEADER)
            )));
        }

        let ca_pem = cli
            .ca_file
            .map(|path| {
                let pem = std::fs::read(&path).map_err(|e| {
                    invalid(ENV_CA_FILE, format!("cannot read {}: {e}", path.display()))
                })?;
                crate::tls::parse_pem_certs(&pem)
                    .map_err(|e| invalid(ENV_CA_FILE, e.to_string()))?;
                Ok(pem)
            })
            .transpose()?;

        Ok(Config {
            listen_addr: cli.listen_addr,
            admin_addr: cli.admin_addr,
            hub_url: cli.hub_url,
            token_url: cli.token_url,
            mode,
            profile: cli.profile_id,
            profiles,
            profile_lock: cli.profile_lock,
            profile_header: cli.profile_header,
            subject_token_type: cli.subject_token_type,
            token_ttl_seconds: cli.token_ttl_seconds,
            scope: cli.scope.filter(|s| !s.is_empty()),
            ca_pem,
            max_body_bytes: cli.max_body_bytes,
            allowed_origins: cli.allowed_origins,
            shutdown_grace: Duration::from_secs(cli.shutdown_grace_seconds),
            exchange_timeout: Duration::from_secs(cli.exchange_timeout_seconds),
            max_cached_subjects: cli.max_cached_subjects,
            worker_threads: cli.worker_threads,
            log_filter: cli.log,
            log_format: cli.log_format,
            hub_protocol: cli.hub_protocol,
        })
    }

    fn subject_mode(cli: &Cli) -> Result<SubjectMode, ConfigError> {
        let count = [
            cli.subject_token_file.is_some(),
            cli.subject_header.is_some(),
            cli.access_token_file.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if count != 1 {
            return Err(ConfigError::Conflict(format!(
                "set exactly one of {}, {}, {} ({count} set)",
                named(ENV_SUBJECT_TOKEN_FILE),
                named(ENV_SUBJECT_HEADER),
                named(ENV_ACCESS_TOKEN_FILE)
            )));
        }
        match (
            &cli.subject_token_file,
            &cli.subject_header,
            &cli.access_token_file,
        ) {
            (Some(path), _, _) => Ok(SubjectMode::File {
                path: path.clone(),
                credentials: Self::credentials(cli)?,
            }),
            (_, Some(name), _) => Ok(SubjectMode::Header {
                name: name.clone(),
                credentials: Self::credentials(cli)?,
            }),
            (_, _, path) => Ok(SubjectMode::Static {
                path: path.clone().unwrap_or_default(),
            }),
        }
    }

    fn credentials(cli: &Cli) -> Result<CredentialsConfig, ConfigError> {
        let client_id = cli
            .client_id
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid(ENV_CLIENT_ID, "required when exchanging tokens"))?;
        let secret_file = cli
            .client_secret_file
            .clone()
            .ok_or_else(|| invalid(ENV_CLIENT_SECRET_FILE, "required when exchanging tokens"))?;
        match std::fs::read_to_string(&secret_file) {
            Ok(s) if !s.trim().is_empty() => {}
            Ok(_) => {
                return Err(invalid(
                    ENV_CLIENT_SECRET_FILE,
                    format!("{} is empty", secret_file.display()),
                ));
            }
            Err(e) => {
                return Err(invalid(
                    ENV_CLIENT_SECRET_FILE,
                    format!("cannot read {}: {e}", secret_file.display()),
                ));
            }
        }
        Ok(CredentialsConfig {
            client_id,
            secret_file,
        })
    }

    /// The log format for a stderr that is, or is not, a terminal ([`LogFormat::choose`]).
    pub fn log_format_for(&self, stderr_is_terminal: bool) -> LogFormat {
        LogFormat::choose(self.log_format, stderr_is_terminal)
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

/// A clap error as a [`ConfigError`]: a bad value names its setting like every other check.
fn clap_error(e: clap::Error) -> ConfigError {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return ConfigError::Info(e.render().to_string());
        }
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            if let Some(bad) = bad_setting(&e) {
                return bad;
            }
        }
        _ => {}
    }
    let rendered = e.render().to_string();
    let line = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid command line")
        .trim()
        .trim_start_matches("error: ");
    ConfigError::Usage(format!("invalid command line: {line}"))
}

/// The setting a value error is about, with the value parser's reason (or the allowed values).
fn bad_setting(e: &clap::Error) -> Option<ConfigError> {
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let mut command = Cli::command();
    // clap names the argument by its rendering, e.g. `--listen-addr <ADDR>`, which needs the
    // built command.
    command.build();
    let arg = command.get_arguments().find(|a| a.to_string() == *shown)?;
    let empty =
        matches!(e.get(ContextKind::InvalidValue), Some(ContextValue::String(v)) if v.is_empty());
    let reason = match (e.kind(), e.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, _) if empty => "needs a value".to_owned(),
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) if !valid.is_empty() => {
            format!("must be one of: {}", valid.join(", "))
        }
        _ => std::error::Error::source(e)
            .map(|source| source.to_string())
            .unwrap_or_else(|| "invalid value".to_owned()),
    };
    Some(ConfigError::Invalid {
        env: arg
            .get_env()
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default(),
        flag: arg.get_long().unwrap_or_default().to_owned(),
        reason,
    })
}

/// Parses the value with surrounding whitespace removed, as settings always have been: a YAML
/// block scalar, for one, leaves a trailing newline.
#[derive(Clone)]
struct Trimmed<P>(P);

impl<P: TypedValueParser> TypedValueParser for Trimmed<P> {
    type Value = P::Value;

    fn parse_ref(
        &self,
        cmd: &Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Self::Value, clap::Error> {
        match value.to_str() {
            Some(text) => self.0.parse_ref(cmd, arg, OsStr::new(text.trim())),
            None => self.0.parse_ref(cmd, arg, value),
        }
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        self.0.possible_values()
    }
}

/// The named profiles of `--profiles` (a newtype: clap would take a `Vec` for a repeated flag).
#[derive(Clone, Debug)]
struct ProfileList(Vec<NamedProfile>);

fn profile_list(text: &str) -> Result<ProfileList, String> {
    crate::profiles::parse(text).map(ProfileList)
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "not an IP:port address".to_owned())
}

/// A number in `min..=max`; `unit` ends the message.
fn ranged<N>(min: N, max: N, unit: &'static str) -> impl Fn(&str) -> Result<N, String> + Clone
where
    N: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |text| {
        text.parse::<N>()
            .ok()
            .filter(|n| *n >= min && *n <= max)
            .ok_or_else(|| format!("must be {min}-{max}{unit}"))
    }
}

fn boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".to_owned()),
    }
}

/// An https URL, or http on a loopback host, without credentials or fragment.
fn endpoint_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    let Some(host) = url.host() else {
        return Err("has no host".to_owned());
    };
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&host) => {}
        "http" => return Err("http:// is allowed only for loopback hosts; use https://".to_owned()),
        other => return Err(format!("unsupported scheme {other}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment".to_owned());
    }
    Ok(url)
}

/// The hub's URL: an endpoint URL whose query the proxy does not have to merge.
fn hub_url(text: &str) -> Result<Url, String> {
    let url = endpoint_url(text)?;
    if url.query().is_some() {
        return Err("must not have a query string".to_owned());
    }
    Ok(url)
}

fn client_id(text: &str) -> Result<String, String> {
    // Basic auth over the raw `id:secret`: a colon in the ID would be ambiguous. Empty is
    // unset: whether an ID is needed depends on the subject mode.
    if text.contains(':') || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces or ':'".to_owned());
    }
    Ok(text.to_owned())
}

fn uuid(text: &str) -> Result<Uuid, String> {
    const MESSAGE: &str = "must be a UUID (8-4-4-4-12 hex digits)";
    // Only the hyphenated form the CRD documents; `Uuid` alone also takes braces and URNs.
    if text.len() != 36 {
        return Err(MESSAGE.to_owned());
    }
    Uuid::try_parse(text).map_err(|_| MESSAGE.to_owned())
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    let name =
        HeaderName::from_bytes(text.as_bytes()).map_err(|_| "not a valid HTTP header name")?;
    if HOP_BY_HOP.contains(&name) || PROXY_OWNED_HEADERS.contains(&name.as_str()) {
        return Err(format!("{name} is managed by the proxy"));
    }
    Ok(name)
}

fn profile_header(text: &str) -> Result<HeaderName, String> {
    let name = header_name(text)?;
    if name == http::header::AUTHORIZATION {
        return Err("must not be Authorization".to_owned());
    }
    Ok(name)
}

fn token_type(text: &str) -> Result<String, String> {
    if !text.starts_with("urn:") || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must be a URN such as urn:ietf:params:oauth:token-type:access_token".to_owned(),
        );
    }
    Ok(text.to_owned())
}

fn scope(text: &str) -> Result<String, String> {
    if !text
        .bytes()
        .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'))
    {
        return Err("must be space-separated printable scope tokens".to_owned());
    }
    Ok(text.to_owned())
}

fn log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text).map_err(|e| format!("not a log filter: {e}"))?;
    Ok(text.to_owned())
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
        assert_eq!(c.log_format, None);
        assert_eq!(c.log_format_for(false), LogFormat::Json);
        assert_eq!(c.log_format_for(true), LogFormat::Text);
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
        assert_eq!(c.log_format, Some(LogFormat::Text));
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
    fn values_are_trimmed_and_flag_errors_name_the_setting() {
        let env = with(
            with(env(), ENV_LOG_FORMAT, " Text\n"),
            ENV_WORKER_THREADS,
            "2 ",
        );
        let c = parse(&env, &[]).unwrap();
        assert_eq!((c.log_format, c.worker_threads), (Some(LogFormat::Text), 2));
        let text = error_of(&env, &["--worker-threads"]);
        assert!(
            text.starts_with("invalid CIVIC_WORKER_THREADS (--worker-threads)"),
            "{text}"
        );
        let text = error_of(&env, &["--log-format=xml"]);
        assert!(text.contains("json, text"), "{text}");
    }

    #[test]
    fn log_format_set_wins_unset_follows_the_terminal() {
        use LogFormat::{Json, Text};
        for (set, terminal, want) in [
            (None, false, Json),
            (None, true, Text),
            (Some(Json), true, Json),
            (Some(Json), false, Json),
            (Some(Text), false, Text),
            (Some(Text), true, Text),
        ] {
            assert_eq!(LogFormat::choose(set, terminal), want, "{set:?} {terminal}");
        }
        // The documented pod default is what an unset format gives off a terminal.
        assert_eq!(
            LogFormat::from_str(DEFAULT_LOG_FORMAT, true),
            Ok(LogFormat::choose(None, false))
        );
        // An explicit `json` (variable or flag) is kept on a terminal too.
        let c = parse(&with(env(), ENV_LOG_FORMAT, "json"), &[]).unwrap();
        assert_eq!(c.log_format_for(true), Json);
        let c = parse(&env(), &["--log-format", "json"]).unwrap();
        assert_eq!(c.log_format_for(true), Json);
        let c = parse(&with(env(), ENV_LOG_FORMAT, ""), &[]).unwrap();
        assert_eq!(c.log_format, None, "empty counts as unset");
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

    /// Every variable of the operator ↔ sidecar contract the sidecar reads.
    const CONTRACT_VARS: [&str; 26] = [
        ENV_LISTEN_ADDR,
        ENV_ADMIN_ADDR,
        ENV_HUB_URL,
        ENV_TOKEN_URL,
        ENV_CLIENT_ID,
        ENV_CLIENT_SECRET_FILE,
        ENV_PROFILE_ID,
        ENV_PROFILES,
        ENV_PROFILE_LOCK,
        ENV_SUBJECT_TOKEN_FILE,
        ENV_SUBJECT_HEADER,
        ENV_ACCESS_TOKEN_FILE,
        ENV_SUBJECT_TOKEN_TYPE,
        ENV_TOKEN_TTL_SECONDS,
        ENV_SCOPE,
        ENV_PROFILE_HEADER,
        ENV_CA_FILE,
        ENV_MAX_BODY_BYTES,
        ENV_ALLOWED_ORIGINS,
        ENV_SHUTDOWN_GRACE_SECONDS,
        ENV_EXCHANGE_TIMEOUT_SECONDS,
        ENV_MAX_CACHED_SUBJECTS,
        ENV_WORKER_THREADS,
        ENV_LOG,
        ENV_LOG_FORMAT,
        ENV_HUB_PROTOCOL,
    ];

    #[test]
    fn every_contract_variable_is_one_flag() {
        let command = Cli::command();
        let vars: Vec<&OsStr> = command
            .get_arguments()
            .filter_map(|a| a.get_env())
            .collect();
        assert_eq!(vars.len(), CONTRACT_VARS.len(), "{vars:?}");
        for var in CONTRACT_VARS {
            assert!(vars.contains(&OsStr::new(var)), "{var} has no flag");
            assert!(!flag_of(var).is_empty(), "{var} has no long flag");
        }
    }

    #[test]
    fn headers_owned_by_the_proxy_are_refused() {
        for name in HOP_BY_HOP
            .iter()
            .map(HeaderName::as_str)
            .chain(PROXY_OWNED_HEADERS.iter().copied())
        {
            assert!(header_name(name).is_err(), "{name}");
        }
        assert!(
            !HOP_BY_HOP
                .iter()
                .any(|h| PROXY_OWNED_HEADERS.contains(&h.as_str())),
            "each name is listed once"
        );
    }

    #[test]
    fn help_lists_env_vars_and_defaults() {
        let env = env();
        let Err(ConfigError::Info(help)) = parse(&env, &["--help"]) else {
            panic!("expected help");
        };
        for var in CONTRACT_VARS {
            assert!(help.contains(var), "{var} missing from --help");
        }
        assert!(help.contains(DEFAULT_LISTEN_ADDR));
        assert!(help.contains(DEFAULT_HUB_URL));
        assert!(help.contains("x-civic-profile-id"));
    }
}
