//! Where the webhook reads CivicIntegrations: a reflector cache (every replica keeps its own,
//! leader or not), and a live read used to confirm anything but a clean match, because a cache
//! that lags must never make a pod silently skip injection.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use kube::api::ListParams;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinHandle;

use crate::crd::CivicIntegration;

/// CivicIntegrations by namespace.
pub trait IntegrationSource: Send + Sync {
    /// The cached integrations of `namespace`; `None` while the cache has not synced.
    fn cached(&self, namespace: &str) -> Option<Vec<Arc<CivicIntegration>>>;
    /// The integrations of `namespace`, read from the API now.
    fn live(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<CivicIntegration>, kube::Error>> + Send;
}

/// The reflector cache and the client for live reads.
#[derive(Clone)]
pub struct KubeIntegrations {
    client: Client,
    store: Store<CivicIntegration>,
    synced: Arc<AtomicBool>,
}

impl KubeIntegrations {
    /// Starts the reflector; the task runs until aborted.
    pub fn start(client: Client) -> (Self, JoinHandle<()>) {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let stream = crate::watch::resilient(
            "webhook-civicintegrations",
            watcher(
                Api::<CivicIntegration>::all(client.clone()),
                watcher::Config::default().any_semantic(),
            ),
        )
        .reflect(writer)
        .applied_objects();
        let (reader, flag) = (store.clone(), synced.clone());
        let task = tokio::spawn(async move {
            let ready = async move {
                if reader.wait_until_ready().await.is_ok() {
                    flag.store(true, Ordering::Release);
                    tracing::info!("CivicIntegration cache synced");
                }
            };
            let drive = stream.for_each(|event| async move {
                if let Err(e) = event {
                    tracing::debug!(error = %e, "CivicIntegration watch error");
                }
            });
            tokio::join!(ready, drive);
        });
        (
            Self {
                client,
                store,
                synced,
            },
            task,
        )
    }
}

impl KubeIntegrations {
    /// Whether the first list has arrived.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

impl IntegrationSource for KubeIntegrations {
    fn cached(&self, namespace: &str) -> Option<Vec<Arc<CivicIntegration>>> {
        if !self.is_synced() {
            return None;
        }
        Some(
            self.store
                .state_filter(|i| i.namespace().as_deref() == Some(namespace)),
        )
    }

    fn live(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<CivicIntegration>, kube::Error>> + Send {
        let api: Api<CivicIntegration> = Api::namespaced(self.client.clone(), namespace);
        async move { Ok(api.list(&ListParams::default()).await?.items) }
    }
}
