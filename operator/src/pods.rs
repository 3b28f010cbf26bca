//! Pod counts per binding, from an index of the live opted-in pods, and the trigger stream that
//! keeps it current.
//!
//! The apiserver does the filtering: the watch asks for pods labelled
//! `mcp.civic.com/inject=enabled` that have not terminated (label and field selectors), as
//! metadata only. Each pod is kept as its labels and the injected-binding annotation, grouped by
//! namespace, so memory grows with the opted-in pods and not with the cluster, and a reconcile
//! reads only its own namespace's pods. A pod that stops matching (terminated, label removed)
//! arrives as a deletion.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures_util::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt, SelectorExt};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::annotations::{self, INJECTED_ANNOTATION};
use crate::crd::{BindingStatus, ProfileBinding};
use crate::validation;

/// Phases a counted pod may be in: terminated pods leave the watch.
const LIVE_PHASES: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// What counting needs of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodEntry {
    labels: BTreeMap<String, String>,
    /// `<integration>/<binding>` of the sidecar it carries.
    injected: Option<String>,
}

impl PodEntry {
    /// `None` for a pod that does not count: not opted in, or being deleted.
    fn of(pod: &PartialObjectMeta<Pod>) -> Option<Self> {
        let m = &pod.metadata;
        let opted_in = annotations::opted_in(pod.labels());
        (opted_in && m.deletion_timestamp.is_none()).then(|| Self {
            labels: m.labels.clone().unwrap_or_default(),
            injected: pod.annotations().get(INJECTED_ANNOTATION).cloned(),
        })
    }
}

/// Pods by name, by namespace.
type Namespaces = HashMap<String, HashMap<String, PodEntry>>;

/// Read side of the index: cheap to clone, shared with every reconcile.
#[derive(Clone)]
pub struct PodIndex {
    namespaces: Arc<RwLock<Namespaces>>,
    ready: watch::Receiver<bool>,
}

impl PodIndex {
    /// Resolves once the initial list is in (`false` if the writer went away first).
    pub async fn wait_until_ready(&self) -> bool {
        self.ready.clone().wait_for(|ready| *ready).await.is_ok()
    }

    /// Opted-in pods indexed, in every namespace.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.read().values().map(HashMap::len).sum()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Namespaces> {
        self.namespaces.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Write side of the index: applies watch events and says which namespaces changed.
pub struct PodIndexWriter {
    namespaces: Arc<RwLock<Namespaces>>,
    ready: watch::Sender<bool>,
    /// The relist being received, swapped in whole at its end.
    relist: Option<Namespaces>,
}

/// An empty index, not ready until the writer applies its first `InitDone`.
pub fn index() -> (PodIndex, PodIndexWriter) {
    let namespaces = Arc::<RwLock<Namespaces>>::default();
    let (ready_tx, ready_rx) = watch::channel(false);
    (
        PodIndex {
            namespaces: namespaces.clone(),
            ready: ready_rx,
        },
        PodIndexWriter {
            namespaces,
            ready: ready_tx,
            relist: None,
        },
    )
}

impl PodIndexWriter {
    /// Applies one watch event; returns the namespaces whose counts may have changed.
    pub fn apply(&mut self, event: watcher::Event<PartialObjectMeta<Pod>>) -> Vec<String> {
        match event {
            watcher::Event::Apply(pod) => self.upsert(&pod),
            watcher::Event::Delete(pod) => {
                let (ns, name) = key(&pod);
                let removed = remove(&mut self.write(), &ns, &name);
                if removed { vec![ns] } else { Vec::new() }
            }
            watcher::Event::Init => {
                self.relist = Some(Namespaces::new());
                Vec::new()
            }
            watcher::Event::InitApply(pod) => {
                if let Some(entry) = PodEntry::of(&pod) {
                    let (ns, name) = key(&pod);
                    let relist = self.relist.get_or_insert_default();
                    relist.entry(ns).or_default().insert(name, entry);
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let changed = {
                    let mut all = self.write();
                    let changed = changed_namespaces(&all, &fresh);
                    *all = fresh;
                    changed
                };
                self.ready.send_replace(true);
                changed
            }
        }
    }

    fn upsert(&mut self, pod: &PartialObjectMeta<Pod>) -> Vec<String> {
        let (ns, name) = key(pod);
        let mut all = self.write();
        let changed = match PodEntry::of(pod) {
            Some(entry) => {
                let pods = all.entry(ns.clone()).or_default();
                let changed = pods.get(&name) != Some(&entry);
                if changed {
                    pods.insert(name, entry);
                }
                changed
            }
            None => remove(&mut all, &ns, &name),
        };
        if changed { vec![ns] } else { Vec::new() }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Namespaces> {
        self.namespaces.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a pod, and its namespace once empty; whether it was there.
fn remove(all: &mut Namespaces, ns: &str, name: &str) -> bool {
    let Some(pods) = all.get_mut(ns) else {
        return false;
    };
    let removed = pods.remove(name).is_some();
    if pods.is_empty() {
        all.remove(ns);
    }
    removed
}

fn key(pod: &PartialObjectMeta<Pod>) -> (String, String) {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Namespaces whose pods differ between two snapshots (after a relist: changes missed while the
/// watch was down).
fn changed_namespaces(old: &Namespaces, new: &Namespaces) -> Vec<String> {
    let mut changed: Vec<String> = new
        .iter()
        .filter(|(ns, pods)| old.get(*ns) != Some(pods))
        .map(|(ns, _)| ns.clone())
        .collect();
    changed.extend(old.keys().filter(|ns| !new.contains_key(*ns)).cloned());
    changed
}

/// Counts, for each binding, the live opted-in pods of `namespace` its selector matches, and how
/// many of them carry this binding's sidecar. Bindings with an invalid selector count nothing.
pub fn binding_counts(
    index: &PodIndex,
    namespace: &str,
    integration: &str,
    bindings: &[ProfileBinding],
) -> Vec<BindingStatus> {
    let selectors: Vec<_> = bindings
        .iter()
        .map(|b| validation::selector(&b.pod_selector))
        .collect();
    let ours: Vec<String> = bindings
        .iter()
        .map(|b| crate::annotations::binding_ref(integration, &b.name))
        .collect();
    let mut counts: Vec<BindingStatus> = bindings
        .iter()
        .map(|b| BindingStatus::of(namespace, b))
        .collect();
    let all = index.read();
    for pod in all.get(namespace).into_iter().flat_map(HashMap::values) {
        for ((selector, this), count) in selectors.iter().zip(&ours).zip(&mut counts) {
            let Some(selector) = selector else { continue };
            if selector.matches(&pod.labels) {
                count.matched_pods += 1;
                if pod.injected.as_ref() == Some(this) {
                    count.injected_pods += 1;
                }
            }
        }
    }
    counts
}

/// A trigger naming only a namespace whose pods changed (as `*`: the controller wants a name to
/// log the trigger by).
fn namespace_trigger(namespace: String) -> PartialObjectMeta<Pod> {
    kube::api::ObjectMeta {
        name: Some("*".into()),
        namespace: Some(namespace),
        ..Default::default()
    }
    .into_response_partial()
}

/// The pod index and the stream of namespaces (as metadata-only pods) whose counts changed. The
/// index is updated as the stream is polled, before each trigger is yielded, so a reconcile
/// triggered by a pod sees that pod.
pub fn watch(
    api: Api<PartialObjectMeta<Pod>>,
) -> (
    PodIndex,
    impl Stream<Item = Result<PartialObjectMeta<Pod>, watcher::Error>> + Send + 'static,
) {
    let (index, mut writer) = index();
    let config = watcher::Config::default()
        .labels(&annotations::opted_in_selector())
        .fields(LIVE_PHASES);
    let stream = crate::watch::resilient("pods", watcher(api, config)).flat_map(move |event| {
        let triggers: Vec<_> = match event {
            Ok(event) => writer
                .apply(event)
                .into_iter()
                .map(|ns| Ok(namespace_trigger(ns)))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        stream::iter(triggers)
    });
    (index, stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::testing::{binding, pod_meta as pod};

    fn listed(pods: Vec<PartialObjectMeta<Pod>>) -> (PodIndex, PodIndexWriter) {
        let (index, mut writer) = index();
        writer.apply(watcher::Event::Init);
        for p in pods {
            writer.apply(watcher::Event::InitApply(p));
        }
        writer.apply(watcher::Event::InitDone);
        (index, writer)
    }

    fn support_and_sales(index: &PodIndex, ns: &str) -> Vec<(i32, i32)> {
        binding_counts(
            index,
            ns,
            "civic",
            &[binding("support", "support"), binding("sales", "sales")],
        )
        .into_iter()
        .map(|b| (b.matched_pods, b.injected_pods))
        .collect()
    }

    #[test]
    fn counts_matched_and_injected_pods_per_binding() {
        let (index, _writer) = listed(vec![
            pod("team", "a", "support", true, Some("civic/support")),
            pod("team", "b", "support", true, None),
            pod("team", "c", "support", false, None), // not opted in
            pod("other", "a", "support", true, Some("civic/support")), // other namespace
            pod("team", "d", "sales", true, Some("other/sales")), // another integration's sidecar
        ]);
        assert_eq!(support_and_sales(&index, "team"), [(2, 1), (1, 0)]);
        assert_eq!(support_and_sales(&index, "none"), [(0, 0), (0, 0)]);
        assert_eq!(index.len(), 4);
    }

    #[tokio::test]
    async fn ready_only_after_the_initial_list() {
        let (index, mut writer) = index();
        writer.apply(watcher::Event::Init);
        writer.apply(watcher::Event::InitApply(pod(
            "team", "a", "support", true, None,
        )));
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            index.wait_until_ready(),
        );
        assert!(early.await.is_err(), "ready before InitDone");
        assert_eq!(index.len(), 0, "a relist in progress is not visible");
        writer.apply(watcher::Event::InitDone);
        assert!(index.wait_until_ready().await);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn changes_report_their_namespace_once() {
        let (index, mut writer) = listed(vec![pod("team", "a", "support", true, None)]);
        let same = pod("team", "a", "support", true, None);
        assert!(
            writer.apply(watcher::Event::Apply(same)).is_empty(),
            "no-op update"
        );
        let injected = pod("team", "a", "support", true, Some("civic/support"));
        assert_eq!(writer.apply(watcher::Event::Apply(injected)), ["team"]);
        assert_eq!(support_and_sales(&index, "team"), [(1, 1), (0, 0)]);

        // Being deleted: no longer counted, even before the deletion arrives.
        let mut deleting = pod("team", "a", "support", true, Some("civic/support"));
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            writer.apply(watcher::Event::Apply(deleting.clone())),
            ["team"]
        );
        assert_eq!(support_and_sales(&index, "team"), [(0, 0), (0, 0)]);
        assert!(writer.apply(watcher::Event::Delete(deleting)).is_empty());
        assert!(index.read().is_empty(), "empty namespaces are dropped");
    }

    #[test]
    fn triggers_can_be_referenced() {
        // The controller refers to every trigger by name; a nameless one panics it.
        let r = kube::runtime::reflector::ObjectRef::from_obj(&namespace_trigger("team".into()));
        assert_eq!(r.namespace.as_deref(), Some("team"));
    }

    #[test]
    fn a_relist_reports_what_changed_while_the_watch_was_down() {
        let (index, mut writer) = listed(vec![
            pod("gone", "a", "support", true, None),
            pod("same", "a", "support", true, None),
            pod("relabelled", "a", "support", true, None),
        ]);
        writer.apply(watcher::Event::Init);
        for p in [
            pod("same", "a", "support", true, None),
            pod("relabelled", "a", "sales", true, None),
            pod("new", "a", "support", true, None),
        ] {
            writer.apply(watcher::Event::InitApply(p));
        }
        let mut changed = writer.apply(watcher::Event::InitDone);
        changed.sort();
        assert_eq!(changed, ["gone", "new", "relabelled"]);
        assert_eq!(support_and_sales(&index, "relabelled"), [(0, 0), (1, 0)]);
        assert_eq!(index.len(), 3);
    }
}
