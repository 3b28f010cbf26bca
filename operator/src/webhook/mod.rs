//! The mutating admission webhook inside `civic-operator run`: every replica serves it (leader
//! or not), from its own CivicIntegration cache, with TLS from [`crate::certs`].
//!
//! - [`admission`]: AdmissionReview in, patch / warning / denial out;
//! - [`integrations`]: the cache and the live read;
//! - [`events`]: Events for pods admitted without a sidecar;
//! - [`server`]: the HTTPS listener;
//! - [`metrics`]: `civic_operator_admissions_total{outcome}` and friends.

pub mod admission;
pub mod events;
pub mod integrations;
pub mod metrics;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use civic_sidecar::backoff::{Backoff, Jitter};
use civic_sidecar::listen;
use clap::{Args, ValueEnum};
use kube::Client;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::admission::Admission;
use self::events::RecorderSink;
use self::integrations::KubeIntegrations;
use self::metrics::WebhookMetrics;
use crate::admin::Health;
use crate::certs::material::Policy;
use crate::certs::{self, SelfManaged};
use crate::inject::InjectDefaults;
use crate::inject::SidecarMode;
use crate::inject::command::{ModeArg, SidecarArgs};

/// Where the webhook's serving certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CertMode {
    /// The operator's own CA and certificate, in a Secret, rotated, `caBundle` kept current.
    SelfManaged,
    /// `tls.crt`/`tls.key` from `--webhook-cert-dir` (cert-manager writes and rotates them).
    CertManager,
}

/// Flags of the webhook (all also read from the environment, as the chart sets them).
#[derive(Clone, Debug, Args)]
pub struct WebhookArgs {
    /// Serve the admission webhook.
    #[arg(long, env = "CIVIC_OPERATOR_WEBHOOK_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhook_enabled: bool,

    /// Address of the webhook's HTTPS listener.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_WEBHOOK_ADDR",
        default_value = "0.0.0.0:9443"
    )]
    pub webhook_addr: SocketAddr,

    /// Name of the MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_WEBHOOK_CONFIG_NAME",
        default_value = "civic-mcp"
    )]
    pub webhook_config_name: String,

    /// Name of the webhook's Service (in the operator's namespace): the serving certificate's
    /// DNS names.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_WEBHOOK_SERVICE_NAME",
        default_value = "civic-mcp-webhook"
    )]
    pub webhook_service_name: String,

    /// Cluster DNS domain, for the Service's fully qualified name.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,

    /// Extra DNS names or IP addresses of the serving certificate (comma-separated).
    #[arg(long, env = "CIVIC_OPERATOR_WEBHOOK_EXTRA_SANS", value_delimiter = ',')]
    pub webhook_extra_san: Vec<String>,

    /// Who provides the serving certificate.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_WEBHOOK_CERT_MODE",
        value_enum,
        default_value = "self-managed"
    )]
    pub webhook_cert_mode: CertMode,

    /// Secret (in the operator's namespace) holding the self-managed CA and certificate.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_WEBHOOK_CERT_SECRET",
        default_value = "civic-mcp-webhook-tls"
    )]
    pub webhook_cert_secret: String,

    /// Directory with `tls.crt` and `tls.key` (cert-manager mode).
    #[arg(
        long,
        env = "CIVIC_OPERATOR_WEBHOOK_CERT_DIR",
        default_value = "/etc/civic-operator/webhook-tls"
    )]
    pub webhook_cert_dir: PathBuf,

    /// Lifetime of the self-managed CA.
    #[arg(long, env = "CIVIC_OPERATOR_WEBHOOK_CA_VALIDITY", default_value = "5y", value_parser = humantime::parse_duration)]
    pub webhook_ca_validity: Duration,

    /// Lifetime of the self-managed serving certificate (renewed with a third left).
    #[arg(long, env = "CIVIC_OPERATOR_WEBHOOK_CERT_VALIDITY", default_value = "90d", value_parser = humantime::parse_duration)]
    pub webhook_cert_validity: Duration,

    /// How often the certificate Secret (or directory) is checked.
    #[arg(long, env = "CIVIC_OPERATOR_WEBHOOK_CERT_CHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub webhook_cert_check_interval: Duration,

    /// Longest live read of CivicIntegrations during one admission (keep it well under the
    /// webhook's timeoutSeconds).
    #[arg(long, env = "CIVIC_OPERATOR_WEBHOOK_LOOKUP_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub webhook_lookup_timeout: Duration,

    /// How to add the sidecar: detected from the apiserver version (native from 1.29), or
    /// forced.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_SIDECAR_MODE",
        value_enum,
        default_value = "auto"
    )]
    pub sidecar_mode: ModeArg,

    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

impl WebhookArgs {
    fn check(&self) -> Result<(), WebhookError> {
        let bad = |m: &str| Err(WebhookError::InvalidConfig(m.to_owned()));
        if self.webhook_cert_validity >= self.webhook_ca_validity {
            return bad("--webhook-cert-validity must be shorter than --webhook-ca-validity");
        }
        if self.webhook_cert_check_interval.is_zero()
            || self.webhook_cert_check_interval * 3 >= self.webhook_cert_validity
        {
            return bad(
                "--webhook-cert-check-interval must be above zero and under a third of \
                 --webhook-cert-validity",
            );
        }
        if self.webhook_lookup_timeout.is_zero()
            || self.webhook_lookup_timeout > Duration::from_secs(25)
        {
            return bad("--webhook-lookup-timeout must be between 1ms and 25s");
        }
        Ok(())
    }

    /// The serving certificate's names: the Service's, then the extra ones.
    pub fn names(&self, namespace: &str) -> Vec<String> {
        let mut names =
            certs::service_names(&self.webhook_service_name, namespace, &self.cluster_domain);
        for extra in &self.webhook_extra_san {
            let extra = extra.trim();
            if !extra.is_empty() && !names.iter().any(|n| n == extra) {
                names.push(extra.to_owned());
            }
        }
        names
    }
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid webhook settings: {0}")]
    InvalidConfig(String),
    #[error("reading the apiserver version: {0}")]
    Version(#[source] kube::Error),
    #[error("the apiserver version {0:?} does not parse; set --sidecar-mode")]
    UnknownVersion(String),
    #[error("webhook metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("webhook TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("webhook listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl WebhookError {
    pub fn category(&self) -> &'static str {
        match self {
            WebhookError::InvalidConfig(_) => "invalid_config",
            WebhookError::Version(e) => crate::error::kube_category(e),
            WebhookError::UnknownVersion(_) => "unknown_version",
            WebhookError::Metrics(_) => "metrics",
            WebhookError::Tls(_) => "tls",
            WebhookError::Listen { .. } => "listen",
        }
    }
}

/// The sidecar mode for the connected apiserver.
pub async fn detect_mode(client: &Client) -> Result<SidecarMode, WebhookError> {
    let info = client
        .apiserver_version()
        .await
        .map_err(WebhookError::Version)?;
    SidecarMode::for_server_version(&info.major, &info.minor)
        .or_else(|| {
            // Some distributions leave major/minor empty; `v1.29.3-eks-…` still says it.
            let v = info.git_version.trim_start_matches('v');
            let mut parts = v.split('.');
            SidecarMode::for_server_version(parts.next()?, parts.next()?)
        })
        .ok_or(WebhookError::UnknownVersion(info.git_version))
}

/// [`detect_mode`], waiting for an unreachable apiserver instead of failing: exiting would put a
/// `failurePolicy: Fail` webhook into CrashLoopBackOff, down for up to 5 min after the apiserver
/// is back.
async fn detect_mode_retrying(client: &Client) -> Result<SidecarMode, WebhookError> {
    let mut retries = Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(10),
        jitter: Jitter::None,
    }
    .retries();
    loop {
        match detect_mode(client).await {
            Err(WebhookError::Version(e)) => {
                let delay = retries.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                    "reading the apiserver version failed; retrying");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

/// How long requests in flight may take once the webhook stops accepting: past the apiserver's
/// usual 10 s call timeout a reply is of no use.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The running webhook.
pub struct Webhook {
    pub addr: SocketAddr,
    pub mode: SidecarMode,
    shutdown: listen::Shutdown,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Webhook {
    /// Asks the open connections to finish and move on; new ones are still admitted (a terminating
    /// pod keeps receiving calls until every apiserver has seen it leave its Service).
    pub fn drain(&self) {
        self.shutdown.drain();
    }

    /// Stops accepting, lets admissions in flight finish, then stops the background tasks.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        for task in self.background {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Starts the webhook (unless disabled): certificates, the integration cache, the listener.
/// `identity` names this replica in Events; metrics go into `registry`; `health` is not ready
/// until the serving certificate and the integration cache are loaded.
pub async fn start(
    args: &WebhookArgs,
    client: Client,
    namespace: &str,
    identity: &str,
    registry: &Registry,
    health: &Health,
    policy: crate::policy::Policy,
) -> Result<Option<Webhook>, WebhookError> {
    if !args.webhook_enabled {
        tracing::info!("admission webhook disabled");
        return Ok(None);
    }
    args.check()?;
    let mode = match args.sidecar_mode {
        ModeArg::Native => SidecarMode::Native,
        ModeArg::Legacy => SidecarMode::Legacy,
        ModeArg::Auto => detect_mode_retrying(&client).await?,
    };
    let metrics = WebhookMetrics::register(registry)?;
    let serving = certs::reload::ServingCert::new();
    let interval = args.webhook_cert_check_interval;
    let source = match args.webhook_cert_mode {
        CertMode::SelfManaged => certs::Source::SelfManaged(SelfManaged {
            namespace: namespace.to_owned(),
            secret: args.webhook_cert_secret.clone(),
            webhook_config: args.webhook_config_name.clone(),
            policy: Policy {
                ca_validity: args.webhook_ca_validity,
                cert_validity: args.webhook_cert_validity,
                names: args.names(namespace),
                propagation: (interval * 2).max(Duration::from_secs(2)),
            },
        }),
        CertMode::CertManager => certs::Source::Dir {
            path: args.webhook_cert_dir.clone(),
        },
    };
    let tls = server::tls_config(serving.clone())?;
    let listener = TcpListener::bind(args.webhook_addr)
        .await
        .map_err(|source| WebhookError::Listen {
            addr: args.webhook_addr,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(args.webhook_addr);

    let loaded = serving.clone();
    let cert_task = certs::spawn(
        source,
        client.clone(),
        serving,
        metrics.cert.clone(),
        interval,
    );
    let (integrations, cache_task) = KubeIntegrations::start(client.clone());
    health.require("the webhook's serving certificate", move || {
        loaded.is_loaded()
    });
    let synced = integrations.clone();
    health.require("the webhook's CivicIntegration cache", move || {
        synced.is_synced()
    });
    let events = Arc::new(RecorderSink::new(client, identity.to_owned()));
    let admission = Arc::new(Admission::new(
        integrations,
        InjectDefaults {
            policy,
            ..args.sidecar.defaults(mode)
        },
        events,
        metrics,
        args.webhook_lookup_timeout,
    ));
    let (stop, mut stopped) = watch::channel(false);
    let shutdown = listen::Shutdown::default();
    let server = tokio::spawn(server::serve(
        listener,
        tls,
        admission,
        shutdown.clone(),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
        STOP_GRACE,
    ));
    tracing::info!(
        addr = %addr,
        sidecar_mode = ?mode,
        cert_mode = ?args.webhook_cert_mode,
        "webhook listening"
    );
    Ok(Some(Webhook {
        addr,
        mode,
        shutdown,
        stop,
        server,
        background: vec![cert_task, cache_task],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhook: WebhookArgs,
    }

    fn parse(args: &[&str]) -> WebhookArgs {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .webhook
    }

    #[test]
    fn defaults_are_consistent() {
        let a = parse(&[]);
        a.check().unwrap();
        assert_eq!(a.webhook_cert_mode, CertMode::SelfManaged);
        assert_eq!(a.sidecar_mode, ModeArg::Auto);
        assert_eq!(
            a.names("civic-system"),
            [
                "civic-mcp-webhook",
                "civic-mcp-webhook.civic-system",
                "civic-mcp-webhook.civic-system.svc",
                "civic-mcp-webhook.civic-system.svc.cluster.local"
            ]
        );
    }

    #[test]
    fn inconsistent_lifetimes_are_refused() {
        let a = parse(&["--webhook-cert-validity", "10y"]);
        assert!(a.check().is_err());
        let a = parse(&[
            "--webhook-cert-validity",
            "30s",
            "--webhook-cert-check-interval",
            "10s",
        ]);
        assert!(a.check().is_err());
        let a = parse(&["--webhook-extra-san", "127.0.0.1,localhost"]);
        assert_eq!(a.names("ns")[4..], ["127.0.0.1", "localhost"]);
        assert!(!parse(&["--webhook-enabled", "false"]).webhook_enabled);
    }
}
