//! Command line: `civic-operator run` (controller and/or webhook), `civic-operator crd` (print
//! the CRD), `civic-operator inject`, `civic-operator issuer`, `civic-operator check`. Every `run`
//! flag also reads an environment variable, so the chart can set them either way.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, Health};
use crate::controller::{self, SecretAccess, Settings, Shared};
use crate::leader::{self, Ended, LeaseLock, LeaseSettings};
use crate::metrics::Metrics;
use crate::probe::{ExchangeProbe, ProbeCache};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "civic-operator",
    version,
    about = "Kubernetes operator for the Civic MCP sidecar"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (with leader election), the admission webhook and the admin endpoints
    /// (`--controller-enabled` / `--webhook-enabled` choose the parts).
    Run(Box<RunArgs>),
    /// Print the CivicIntegration CustomResourceDefinition as YAML.
    Crd,
    /// Print Pods and workload manifests with the Civic sidecar injected, exactly as the
    /// admission webhook would inject them.
    Inject(Box<crate::inject::command::InjectArgs>),
    /// Print what to enter in Civic Auth's token-exchange provider to trust this cluster's
    /// service-account issuer (issuer URL, JWKS URI, each binding's audience and subjects), read
    /// with your kubeconfig, and what stands in the way. Exit status 0: the issuer can work;
    /// 1: it cannot as it is; 2: the cluster could not be asked.
    Issuer(Box<crate::issuer::IssuerArgs>),
    /// Check the installation: the CRD, the operator's Deployments and leader, the webhook's
    /// certificates and a dry-run admission, the integrations' readiness, opted-in pods without
    /// a sidecar and sidecars that are not ready; each failure with a hint. Exit status 0: no
    /// failure (warnings allowed); 1: a check failed; 2: usage error or no cluster to ask.
    /// Installed as `kubectl-civic`, it runs as `kubectl civic check`.
    Check(Box<crate::check::CheckArgs>),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the admin listener (`/livez`, `/readyz`, `/metrics`).
    #[arg(
        long,
        env = "CIVIC_OPERATOR_ADMIN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_addr: SocketAddr,

    /// Namespace the operator runs in (holds its leader Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "civic-system")]
    pub namespace: String,

    /// Unique identity of this replica in the leader election (its pod name). Default: the
    /// host name plus a random suffix.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_LEASE_NAME",
        default_value = "civic-mcp-operator"
    )]
    pub lease_name: String,

    /// How long the lease is valid after its last renewal.
    #[arg(long, env = "CIVIC_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// The leader steps down when it could not renew for this long (< lease duration).
    #[arg(long, env = "CIVIC_OPERATOR_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_renew_deadline: Duration,

    /// Time between lease acquire/renew attempts (< renew deadline).
    #[arg(long, env = "CIVIC_OPERATOR_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease_retry_period: Duration,

    /// Healthy integrations are reconciled again after this.
    #[arg(long, env = "CIVIC_OPERATOR_RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// Namespaces whose Secrets the controller may read (comma-separated), as its RBAC grants
    /// (chart value `controller.secretNamespaces`): rotations there are noticed at once by a
    /// watch. Empty: every namespace, by `get` alone, each Secret re-read every
    /// `--secret-recheck-interval`.
    #[arg(long, env = "CIVIC_OPERATOR_SECRET_NAMESPACES", value_delimiter = ',')]
    pub secret_namespaces: Vec<String>,

    /// Without `--secret-namespaces`, each integration re-reads its client Secret this often to
    /// notice a rotation (one GET; no probe unless the Secret changed).
    #[arg(long, env = "CIVIC_OPERATOR_SECRET_RECHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub secret_recheck_interval: Duration,

    /// A credential verdict is reused this long while the client ID, token URL and Secret stay
    /// unchanged.
    #[arg(long, env = "CIVIC_OPERATOR_PROBE_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub probe_interval: Duration,

    /// Least time between two credential probes of one integration.
    #[arg(long, env = "CIVIC_OPERATOR_PROBE_MIN_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub probe_min_interval: Duration,

    /// Timeout of one credential probe (at most 15s).
    #[arg(long, env = "CIVIC_OPERATOR_PROBE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub probe_timeout: Duration,

    /// PEM bundle of extra CAs trusted for token URLs (besides the public web roots).
    #[arg(long, env = "CIVIC_OPERATOR_TOKEN_URL_CA_FILE")]
    pub token_url_ca_file: Option<PathBuf>,

    /// First retry delay after a transient error; doubles per failure.
    #[arg(long, env = "CIVIC_OPERATOR_BACKOFF_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,

    /// Longest retry delay.
    #[arg(long, env = "CIVIC_OPERATOR_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,

    /// Run the CivicIntegration controller (leader-elected). The chart runs the controller and the
    /// webhook as separate Deployments, so a controller that fails or runs out of memory never
    /// stops pod admission.
    #[arg(long, env = "CIVIC_OPERATOR_CONTROLLER_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub controller_enabled: bool,

    /// On SIGTERM the webhook reports not ready but keeps admitting for this long, while the
    /// apiservers stop sending to this replica; then it stops accepting.
    #[arg(long, env = "CIVIC_OPERATOR_DRAIN_PERIOD", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "CIVIC_OPERATOR_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// The admission webhook (served by every replica) and the defaults of injected sidecars.
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
}

/// Why `run` stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    LeaseTiming(#[from] leader::InvalidLeaseTiming),
    #[error("token URL CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] civic_sidecar::tls::TlsError),
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("admin listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the controller stopped unexpectedly")]
    ControllerStopped,
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
}

impl RunError {
    /// Low-cardinality label.
    pub fn category(&self) -> &'static str {
        match self {
            RunError::LeaseTiming(_) => "invalid_config",
            RunError::CaFile { .. } => "ca_file",
            RunError::Tls(e) => e.category(),
            RunError::Kube(_) => "kube_client",
            RunError::Listen { .. } => "listen",
            RunError::ControllerStopped => "controller_stopped",
            RunError::Webhook(e) => e.category(),
        }
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "civic-operator".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

fn secret_access(args: &RunArgs) -> SecretAccess {
    let served: BTreeSet<String> = args
        .secret_namespaces
        .iter()
        .map(|ns| ns.trim())
        .filter(|ns| !ns.is_empty())
        .map(str::to_owned)
        .collect();
    if served.is_empty() {
        SecretAccess::ClusterGet {
            recheck: args.secret_recheck_interval,
        }
    } else {
        SecretAccess::Namespaces(served)
    }
}

/// `civic-operator run`: admin endpoints always; the controller while this replica leads.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let lease = LeaseSettings {
        namespace: args.namespace.clone(),
        name: args.lease_name.clone(),
        identity: args.identity.clone().unwrap_or_else(default_identity),
        lease_duration: args.lease_duration,
        renew_deadline: args.lease_renew_deadline,
        retry_period: args.lease_retry_period,
    };
    lease.check()?;
    let ca = match &args.token_url_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| RunError::CaFile {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let tls = civic_sidecar::tls::client_config(ca.as_deref())?;
    let client = kube::Client::try_default().await?;

    let metrics = Metrics::new();
    let health = Health::default();
    let listener = TcpListener::bind(args.admin_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: args.admin_addr,
            source,
        })?;
    let admin_addr = listener.local_addr().unwrap_or(args.admin_addr);
    tracing::info!(addr = %admin_addr, identity = %lease.identity, "admin endpoints listening");
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let admin = tokio::spawn(admin::serve(
        listener,
        metrics.clone(),
        health.clone(),
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));

    let mut policy = args.webhook.sidecar.policy();
    if let Some(issuer) = crate::policy::discover_issuer(&client).await {
        tracing::info!(issuer = %issuer, "tokens for the service-account issuer are refused");
        policy.refuse_audience(&issuer);
    }
    let webhook = crate::webhook::start(
        &args.webhook,
        client.clone(),
        &args.namespace,
        &lease.identity,
        metrics.registry(),
        &health,
        policy.clone(),
    )
    .await?;

    let ended = if args.controller_enabled {
        let shared = Shared {
            client: client.clone(),
            probe: Arc::new(ExchangeProbe::new(tls, args.probe_timeout)),
            probes: Arc::new(ProbeCache::new(
                args.probe_interval,
                args.probe_min_interval,
            )),
            metrics: metrics.clone(),
            settings: Settings {
                resync: args.resync_interval,
                backoff_base: args.backoff_base,
                backoff_max: args.backoff_max,
                secrets: secret_access(&args),
                policy,
                ..Settings::default()
            },
            identity: lease.identity.clone(),
        };
        let lock = LeaseLock::new(client, lease);
        let answered = Arc::new(AtomicBool::new(false));
        let seen = answered.clone();
        health.require("the Lease API", move || seen.load(Ordering::Relaxed));
        // The controller stops (and hands the lease over) at once on SIGTERM; the webhook drains.
        let (_, ended) = leader::run(
            lock,
            metrics,
            move |r| answered.store(r, Ordering::Relaxed),
            shutdown_signal(),
            move |gate| controller::run(shared.clone(), gate),
        )
        .await;
        ended
    } else {
        tracing::info!("controller disabled: admission webhook only");
        shutdown_signal().await;
        Ended::Shutdown
    };
    health.drain();
    if let Some(webhook) = webhook {
        tracing::info!(
            drain_ms = args.drain_period.as_millis() as u64,
            "draining: not ready, still admitting"
        );
        webhook.drain();
        tokio::time::sleep(args.drain_period).await;
        webhook.stop().await;
    }
    let _ = stop_tx.send(true);
    let _ = admin.await;
    match ended {
        Ended::Shutdown => Ok(()),
        Ended::WorkEnded => Err(RunError::ControllerStopped),
    }
}
