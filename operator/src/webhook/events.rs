//! Events for pods admitted without a sidecar, on the pod's owner when it has one (the
//! ReplicaSet, Job, …), else on the pod. Published in the background, never on the admission
//! path; repeated notices for one object are dropped for a while, so a 100-replica rollout makes
//! one Event, not a hundred.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Semaphore;

/// Reason of the Event.
pub const REASON_NOT_INJECTED: &str = "NotInjected";
/// One Event per object at most this often.
const QUIET: Duration = Duration::from_secs(300);
/// Most Events being published at once; more are dropped.
const MAX_IN_FLIGHT: usize = 8;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REMEMBERED: usize = 4096;

/// Receives "admitted without a sidecar" notices.
pub trait EventSink: Send + Sync {
    fn not_injected(&self, regarding: ObjectReference, note: String);
}

/// No Events (benchmarks, tests).
pub struct NoEvents;

impl EventSink for NoEvents {
    fn not_injected(&self, _: ObjectReference, _: String) {}
}

/// The object an Event about `pod` is best attached to: its controller, else the pod itself
/// (by name; at admission a pod has no uid yet). `None` for a pod with neither.
pub fn regarding(pod: &Pod, namespace: &str) -> Option<ObjectReference> {
    if let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        return Some(ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            namespace: Some(namespace.to_owned()),
            uid: Some(owner.uid.clone()),
            ..ObjectReference::default()
        });
    }
    pod.metadata.name.as_ref().map(|name| ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(name.clone()),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
    })
}

/// Remembers recently announced objects, so repeats within [`QUIET`] are dropped.
#[derive(Default)]
struct Throttle {
    recent: Mutex<HashMap<String, Instant>>,
}

impl Throttle {
    /// True the first time for `key` within [`QUIET`].
    fn first_in_a_while(&self, key: String, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= MAX_REMEMBERED {
            recent.retain(|_, t| now.duration_since(*t) < QUIET);
        }
        match recent.get(&key) {
            Some(t) if now.duration_since(*t) < QUIET => false,
            _ => {
                // Still full of fresh keys: forget them rather than grow without bound.
                if recent.len() >= MAX_REMEMBERED {
                    recent.clear();
                }
                recent.insert(key, now);
                true
            }
        }
    }
}

/// Publishes `events.k8s.io` Events with kube's recorder.
pub struct RecorderSink {
    recorder: Recorder,
    throttle: Throttle,
    in_flight: Arc<Semaphore>,
}

impl RecorderSink {
    pub fn new(client: Client, instance: String) -> Self {
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: crate::controller::REPORTING_CONTROLLER.into(),
                    instance: Some(instance),
                },
            ),
            throttle: Throttle::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

impl EventSink for RecorderSink {
    fn not_injected(&self, regarding: ObjectReference, note: String) {
        let key = format!(
            "{}/{}/{}/{}",
            regarding.namespace.as_deref().unwrap_or_default(),
            regarding.kind.as_deref().unwrap_or_default(),
            regarding.name.as_deref().unwrap_or_default(),
            regarding.uid.as_deref().unwrap_or_default(),
        );
        if !self.throttle.first_in_a_while(key, Instant::now()) {
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::debug!("too many Events in flight; dropping one");
            return;
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            let event = Event {
                type_: EventType::Warning,
                reason: REASON_NOT_INJECTED.into(),
                note: Some(note),
                action: "Inject".into(),
                secondary: None,
            };
            match tokio::time::timeout(PUBLISH_TIMEOUT, recorder.publish(&event, &regarding)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "publishing a NotInjected Event failed"),
                Err(_) => tracing::warn!("publishing a NotInjected Event timed out"),
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_dropped_for_a_while_and_memory_is_bounded() {
        let t = Throttle::default();
        let now = Instant::now();
        assert!(t.first_in_a_while("rs/a".into(), now));
        assert!(!t.first_in_a_while("rs/a".into(), now + Duration::from_secs(10)));
        assert!(t.first_in_a_while("rs/b".into(), now));
        assert!(t.first_in_a_while("rs/a".into(), now + QUIET));
        for i in 0..(MAX_REMEMBERED * 2) {
            t.first_in_a_while(format!("k{i}"), now);
        }
        assert!(t.recent.lock().unwrap().len() <= MAX_REMEMBERED);
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    #[test]
    fn events_go_to_the_controller_else_the_named_pod() {
        let mut pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some("web-".into()),
                owner_references: Some(vec![
                    OwnerReference {
                        api_version: "v1".into(),
                        kind: "ConfigMap".into(),
                        name: "not-the-controller".into(),
                        uid: "u0".into(),
                        ..OwnerReference::default()
                    },
                    OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: "web-5d4f".into(),
                        uid: "u1".into(),
                        controller: Some(true),
                        ..OwnerReference::default()
                    },
                ]),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let r = regarding(&pod, "team").unwrap();
        assert_eq!(r.kind.as_deref(), Some("ReplicaSet"));
        assert_eq!(r.uid.as_deref(), Some("u1"));
        assert_eq!(r.namespace.as_deref(), Some("team"));
        pod.metadata.owner_references = None;
        assert!(regarding(&pod, "team").is_none(), "no name, no owner");
        pod.metadata.name = Some("solo".into());
        assert_eq!(
            regarding(&pod, "team").unwrap().kind.as_deref(),
            Some("Pod")
        );
    }
}
