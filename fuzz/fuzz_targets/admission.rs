//! The operator's AdmissionReview handler (`Admission::review`) over arbitrary request bodies,
//! with the golden CivicIntegrations in the cache and behind the live read.
//!
//! Never panics, never hangs; answers 200 with an AdmissionReview carrying the request's uid,
//! or 400. A patch, when there is one, applies to the pod it was computed for, adds at most
//! one sidecar, and every volume it adds (client secret, subject token, CA) is mounted by the
//! sidecar container only.
#![no_main]

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use civic_operator::crd::CivicIntegration;
use civic_operator::inject::{InjectDefaults, SIDECAR_CONTAINER};
use civic_operator::webhook::admission::Admission;
use civic_operator::webhook::events::NoEvents;
use civic_operator::webhook::integrations::IntegrationSource;
use civic_operator::webhook::metrics::WebhookMetrics;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const GOLDEN: [&str; 3] = [
    include_str!("../../operator/tests/golden/integrations.yaml"),
    include_str!("../../operator/tests/golden/request-header.integration.yaml"),
    include_str!("../../operator/tests/golden/static-token.integration.yaml"),
];

struct Golden(Vec<CivicIntegration>);

impl IntegrationSource for Golden {
    fn cached(&self, namespace: &str) -> Option<Vec<Arc<CivicIntegration>>> {
        Some(
            self.0
                .iter()
                .filter(|i| i.metadata.namespace.as_deref() == Some(namespace))
                .cloned()
                .map(Arc::new)
                .collect(),
        )
    }

    fn live(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<CivicIntegration>, kube::Error>> + Send {
        let list = self
            .0
            .iter()
            .filter(|i| i.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect();
        std::future::ready(Ok(list))
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    admission: Admission<Golden>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut integrations = Vec::new();
        for (i, text) in GOLDEN.iter().enumerate() {
            // Through JSON: serde_yaml_ng reads an externally tagged enum (`subject`) only
            // from a YAML tag, while the apiserver (and these files) use a one-key map.
            let value: Value = serde_yaml_ng::from_str(text).expect("golden YAML");
            let mut one: CivicIntegration = serde_json::from_value(value).expect("golden");
            // Distinct names, all in the golden namespace.
            one.metadata.name = Some(format!("civic-{i}"));
            integrations.push(one);
        }
        World {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            admission: Admission::new(
                Golden(integrations),
                InjectDefaults::default(),
                Arc::new(NoEvents),
                WebhookMetrics::unregistered(),
                Duration::from_millis(50),
            ),
        }
    })
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod["spec"][k].as_array())
        .flatten()
        .collect()
}

fn check_patch(request: &Value, response: &Value) {
    let Some(patch) = response["patch"].as_str() else {
        return;
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSON Patch");
    let original = request["object"].clone();
    let mut pod = original.clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the reviewed pod");
    let sidecars = containers(&pod)
        .iter()
        .filter(|c| c["name"] == SIDECAR_CONTAINER)
        .count();
    assert!(sidecars <= 1, "{sidecars} sidecars");
    let before: Vec<&str> = original["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let added: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .filter(|n| !before.contains(n))
        .collect();
    for c in containers(&pod) {
        if c["name"] == SIDECAR_CONTAINER {
            continue;
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or_default();
            assert!(
                !added.contains(&name),
                "container {} mounts the injected volume {name}",
                c["name"]
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let reply = w.runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(2),
            w.admission.review(data, Some(Duration::from_secs(10))),
        )
        .await
        .expect("review within 2 s")
    });
    match reply.status {
        400 => {}
        200 => {
            let answer: Value = serde_json::from_slice(&reply.body).expect("JSON answer");
            let response = &answer["response"];
            assert!(response["allowed"].is_boolean());
            // The handler skips unknown fields without checking their escapes (a lone
            // surrogate `\ud800` is fine there), so a request it took may not parse as a
            // `Value`; then there is nothing to compare the answer with.
            let Ok(request) = serde_json::from_slice::<Value>(data) else {
                return;
            };
            assert_eq!(response["uid"], request["request"]["uid"], "uid echoed");
            assert!(response["allowed"].is_boolean());
            if response["allowed"] == true {
                check_patch(&request["request"], response);
            } else {
                assert!(response.get("patch").is_none_or(Value::is_null), "denied with a patch");
            }
        }
        other => panic!("status {other}"),
    }
});
