//! Webhook TLS without cert-manager, or with it.
//!
//! Self-managed (the default): the operator makes a CA and a serving certificate for the
//! webhook Service's DNS names, keeps them in a Secret of its namespace (create-if-absent with
//! optimistic concurrency, so replicas agree on one CA: the first writer wins and the others
//! read it), rotates them before expiry ([`material`] describes how old and new CAs are both
//! trusted through a rotation), swaps the serving certificate into the running server
//! ([`reload::ServingCert`]), and keeps the MutatingWebhookConfiguration's `caBundle` equal to
//! the Secret's `ca.crt` by server-side apply. Every replica runs the same loop: each step is
//! derived from the Secret, so they converge.
//!
//! cert-manager mode: the operator only reads `tls.crt`/`tls.key` from a mounted directory and
//! reloads them when they change; cert-manager's CA injector owns `caBundle`.

pub mod bundle;
pub mod issue;
pub mod material;
pub mod reload;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::bundle::WebhookConfig;
use self::issue::CertKey;
use self::material::{Policy, Step};
use self::reload::ServingCert;
use self::store::{SecretStore, Written};

/// Why certificate material could not be made, read or installed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no readable certificate")]
    NoCertificate,
    #[error("no readable private key")]
    NoPrivateKey,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Secret kept changing while it was being updated")]
    Contended,
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CertError {
    /// Low-cardinality label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CertError::Generate(_) => "generate",
            CertError::NoCertificate | CertError::NoPrivateKey => "unreadable",
            CertError::Tls(_) => "tls",
            CertError::Kube(e) => crate::error::kube_category(e),
            CertError::Contended => "contended",
            CertError::Read { .. } => "read",
        }
    }
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    SelfManaged(SelfManaged),
    /// cert-manager (or anything) writes `tls.crt` and `tls.key` into this directory.
    Dir {
        path: PathBuf,
    },
}

/// Settings of self-managed TLS.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    /// Namespace of the Secret (the operator's).
    pub namespace: String,
    pub secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept current.
    pub webhook_config: String,
    pub policy: Policy,
}

/// Metrics the certificate loop keeps.
#[derive(Clone)]
pub struct CertMetrics {
    /// Secret writes, by reason (`created`, `renewed`, `staged`, `rotated`, `pruned`).
    pub writes: IntCounterVec,
    /// Expiry of the serving certificate in use, Unix seconds.
    pub expiry: IntGauge,
    /// Failed sync rounds.
    pub errors: IntCounter,
}

/// The DNS names of a Service: `name`, `name.ns`, `name.ns.svc`, `name.ns.svc.<domain>`.
pub fn service_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    let mut names = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
    ];
    let domain = cluster_domain.trim_matches('.');
    if !domain.is_empty() {
        names.push(format!("{service}.{namespace}.svc.{domain}"));
    }
    names
}

/// Starts keeping `serving` current in the background. `interval` is how often the Secret (or
/// directory) is checked; webhook configuration changes are also noticed at once.
pub fn spawn(
    source: Source,
    client: Client,
    serving: Arc<ServingCert>,
    metrics: CertMetrics,
    interval: Duration,
) -> JoinHandle<()> {
    match source {
        Source::SelfManaged(settings) => {
            tokio::spawn(self_managed(settings, client, serving, metrics, interval))
        }
        Source::Dir { path } => tokio::spawn(from_dir(path, serving, metrics, interval)),
    }
}

async fn self_managed(
    settings: SelfManaged,
    client: Client,
    serving: Arc<ServingCert>,
    metrics: CertMetrics,
    interval: Duration,
) {
    let store = SecretStore::new(client.clone(), &settings.namespace, &settings.secret);
    let config = WebhookConfig::new(client.clone(), &settings.webhook_config);
    let changed = Arc::new(Notify::new());
    let watch = tokio::spawn(watch_config(
        client,
        settings.webhook_config.clone(),
        changed.clone(),
    ));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = changed.notified() => {}
        }
        if let Err(e) = sync(&settings, &store, &config, &serving, &metrics).await {
            metrics.errors.inc();
            tracing::warn!(
                category = e.category(),
                error = %e,
                secret = %settings.secret,
                "webhook certificate sync failed"
            );
        }
        metrics.expiry.set(serving.not_after_unix());
        if watch.is_finished() {
            tracing::warn!("webhook configuration watch ended; relying on the interval");
        }
    }
}

/// One round: plan over the Secret, write if needed (retrying lost races), install the serving
/// certificate, bring `caBundle` in line.
pub async fn sync(
    settings: &SelfManaged,
    store: &SecretStore,
    config: &WebhookConfig,
    serving: &ServingCert,
    metrics: &CertMetrics,
) -> Result<(), CertError> {
    const ATTEMPTS: usize = 3;
    let mut material = None;
    for _ in 0..ATTEMPTS {
        let stored = store.read().await?;
        let trust = config.trust().await?;
        match material::plan(
            stored.material.as_ref(),
            SystemTime::now(),
            &settings.policy,
            |pem| trust.trusts(pem),
        )? {
            Step::Keep => {
                material = stored.material;
                break;
            }
            Step::Write(m, why) => match store.write(&stored, &m).await? {
                Written::Ok => {
                    tracing::info!(secret = %store.name(), reason = why, "webhook certificates updated");
                    metrics.writes.with_label_values(&[reason_label(why)]).inc();
                    material = Some(m);
                    break;
                }
                Written::Conflict => {
                    tracing::debug!(secret = %store.name(), "another replica wrote first; reading again");
                }
            },
        }
    }
    let material = material.ok_or(CertError::Contended)?;
    if serving.set(&material.serving)? {
        tracing::info!("webhook serving certificate loaded");
    }
    if config.ensure(&material.bundle_pem()).await? {
        tracing::info!(
            configuration = %config.name(),
            cas = material.bundle.len(),
            "webhook caBundle updated"
        );
    }
    Ok(())
}

fn reason_label(why: &str) -> &'static str {
    match why {
        "created" => "created",
        "staged a new CA" => "staged",
        "rotated the CA" => "rotated",
        "renewed the serving certificate" => "renewed",
        "dropped an expired CA" => "pruned",
        _ => "other",
    }
}

/// Wakes the loop whenever the webhook configuration changes (e.g. the chart re-created it
/// without a `caBundle`).
async fn watch_config(client: Client, name: String, changed: Arc<Notify>) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = crate::watch::resilient("webhook-configuration", watcher(api, config))
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::debug!(error = %e, "webhook configuration watch error"),
        }
    }
}

async fn from_dir(
    dir: PathBuf,
    serving: Arc<ServingCert>,
    metrics: CertMetrics,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match load_dir(&dir).await.and_then(|pair| serving.set(&pair)) {
            Ok(true) => tracing::info!(dir = %dir.display(), "webhook serving certificate loaded"),
            Ok(false) => {}
            Err(e) => {
                metrics.errors.inc();
                tracing::warn!(category = e.category(), error = %e, "reading the webhook certificate failed");
            }
        }
        metrics.expiry.set(serving.not_after_unix());
    }
}

async fn load_dir(dir: &std::path::Path) -> Result<CertKey, CertError> {
    let read = |name: &str| {
        let path = dir.join(name);
        async move {
            tokio::fs::read_to_string(&path)
                .await
                .map_err(|source| CertError::Read { path, source })
        }
    };
    Ok(CertKey {
        cert_pem: read("tls.crt").await?,
        key_pem: read("tls.key").await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_cover_the_usual_forms() {
        assert_eq!(
            service_names("civic-webhook", "civic-system", "cluster.local"),
            [
                "civic-webhook",
                "civic-webhook.civic-system",
                "civic-webhook.civic-system.svc",
                "civic-webhook.civic-system.svc.cluster.local"
            ]
        );
        assert_eq!(service_names("w", "n", "").len(), 3);
    }

    #[tokio::test]
    async fn a_certificate_directory_is_loaded_and_reloaded() {
        let now = SystemTime::now();
        let ca = issue::new_ca(now, Duration::from_secs(600)).unwrap();
        let a = issue::serving(&ca, &["w.svc".into()], now, Duration::from_secs(60)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), &a.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &a.key_pem).unwrap();
        let pair = load_dir(dir.path()).await.unwrap();
        assert_eq!(pair, a);
        let err = load_dir(&dir.path().join("missing")).await.unwrap_err();
        assert_eq!(err.category(), "read");
    }
}
