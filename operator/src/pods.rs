//! Pod counts per binding, from a trimmed cluster-wide pod cache, and the pod trigger stream that
//! keeps them current.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use futures_util::{Stream, StreamExt, future};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::core::SelectorExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use crate::annotations::{BINDING_ANNOTATION, INJECT_ENABLED, INJECT_LABEL, INJECTED_ANNOTATION};
use crate::crd::{BindingStatus, ProfileBinding};
use crate::validation;

/// Counts, for each binding, the live opted-in pods of `namespace` its selector matches, and how
/// many of them carry this binding's sidecar. Bindings with an invalid selector count nothing.
pub fn binding_counts(
    pods: &[impl std::ops::Deref<Target = Pod>],
    namespace: &str,
    integration: &str,
    bindings: &[ProfileBinding],
) -> Vec<BindingStatus> {
    let selectors: Vec<_> = bindings
        .iter()
        .map(|b| validation::selector(&b.pod_selector))
        .collect();
    let mut counts: Vec<BindingStatus> = bindings
        .iter()
        .map(|b| BindingStatus {
            name: b.name.clone(),
            matched_pods: 0,
            injected_pods: 0,
        })
        .collect();
    let live = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| is_live(p) && opted_in(p));
    for pod in live {
        let labels = pod.labels();
        let injected = pod.annotations().get(INJECTED_ANNOTATION);
        for ((binding, selector), count) in bindings.iter().zip(&selectors).zip(&mut counts) {
            let Some(selector) = selector else { continue };
            if selector.matches(labels) {
                count.matched_pods += 1;
                let this = crate::annotations::binding_ref(integration, &binding.name);
                if injected == Some(&this) {
                    count.injected_pods += 1;
                }
            }
        }
    }
    counts
}

fn opted_in(pod: &Pod) -> bool {
    pod.labels().get(INJECT_LABEL).map(String::as_str) == Some(INJECT_ENABLED)
}

/// Not terminated and not being deleted.
fn is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Keeps only what counting needs, so the cache of every pod in the cluster stays small.
pub fn trim(pod: &mut Pod) {
    pod.spec = None;
    let phase = pod.status.take().and_then(|s| s.phase);
    pod.status = phase.map(|phase| PodStatus {
        phase: Some(phase),
        ..PodStatus::default()
    });
    let m = &mut pod.metadata;
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == INJECTED_ANNOTATION || k == BINDING_ANNOTATION);
    }
}

/// What about a pod can change a count.
fn fingerprint(pod: &Pod) -> u64 {
    let mut h = DefaultHasher::new();
    pod.labels().hash(&mut h);
    pod.annotations().get(INJECTED_ANNOTATION).hash(&mut h);
    is_live(pod).hash(&mut h);
    h.finish()
}

/// A reflector over all pods (trimmed) and the stream of pods whose count-relevant state changed
/// (including deletions). The store is filled as the stream is polled, before each item is
/// yielded, so a reconcile triggered by a pod sees that pod.
pub fn watch(
    api: Api<Pod>,
) -> (
    Store<Pod>,
    impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let stream =
        crate::controller::relist_at_once("pods", watcher(api, watcher::Config::default()))
            .backoff(crate::controller::WatchBackoff::default())
            .modify(trim)
            .reflect(writer)
            .filter_map(move |event| {
                let out = match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        let key = pod.uid().unwrap_or_else(|| pod.name_any());
                        let fp = fingerprint(&pod);
                        (seen.insert(key, fp) != Some(fp)).then_some(Ok(pod))
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        seen.remove(&pod.uid().unwrap_or_else(|| pod.name_any()));
                        Some(Ok(pod))
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                    Err(e) => Some(Err(e)),
                };
                future::ready(out)
            });
    (store, stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use crate::testing::binding;

    fn pod(ns: &str, app: &str, opted_in: bool, injected: Option<&str>) -> Arc<Pod> {
        let mut labels = BTreeMap::from([("app".to_string(), app.to_string())]);
        if opted_in {
            labels.insert(INJECT_LABEL.into(), INJECT_ENABLED.into());
        }
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(format!("{app}-x")),
                namespace: Some(ns.into()),
                labels: Some(labels),
                annotations: injected
                    .map(|v| BTreeMap::from([(INJECTED_ANNOTATION.to_string(), v.to_string())])),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
    }

    fn with_phase(p: Arc<Pod>, phase: &str) -> Arc<Pod> {
        let mut p = (*p).clone();
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            ..PodStatus::default()
        });
        Arc::new(p)
    }

    #[test]
    fn counts_matched_and_injected_pods_per_binding() {
        let pods = vec![
            pod("team", "support", true, Some("civic/support")),
            pod("team", "support", true, None),
            pod("team", "support", false, None), // not opted in
            pod("other", "support", true, Some("civic/support")), // other namespace
            pod("team", "sales", true, Some("other/sales")), // another integration's sidecar
            with_phase(
                pod("team", "support", true, Some("civic/support")),
                "Succeeded",
            ),
        ];
        let counts = binding_counts(
            &pods,
            "team",
            "civic",
            &[binding("support", "support"), binding("sales", "sales")],
        );
        assert_eq!(
            counts,
            [
                BindingStatus {
                    name: "support".into(),
                    matched_pods: 2,
                    injected_pods: 1
                },
                BindingStatus {
                    name: "sales".into(),
                    matched_pods: 1,
                    injected_pods: 0
                },
            ]
        );
    }

    #[test]
    fn pods_being_deleted_do_not_count() {
        let mut p = (*pod("team", "support", true, Some("civic/support"))).clone();
        p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let counts = binding_counts(
            &[Arc::new(p)],
            "team",
            "civic",
            &[binding("support", "support")],
        );
        assert_eq!(counts[0].matched_pods, 0);
    }

    #[test]
    fn trim_keeps_what_counting_needs() {
        let mut p = (*pod("team", "support", true, Some("civic/support"))).clone();
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("big".into(), "x".repeat(1000));
        p.spec = Some(Default::default());
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.0.0.1".into()),
            ..PodStatus::default()
        });
        let before = fingerprint(&p);
        trim(&mut p);
        assert!(p.spec.is_none());
        assert_eq!(p.status.as_ref().unwrap().pod_ip, None);
        assert_eq!(p.annotations().len(), 1);
        assert_eq!(fingerprint(&p), before);
        assert_eq!(p.labels().len(), 2);
    }
}
