use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Pod, PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::select::{SelectError, UnusableError, Usable, select, usable};
use super::*;
use crate::annotations::BINDING_ANNOTATION;
use crate::crd::{
    CivicIntegrationSpec, RequestHeaderSubject, SecretKeyRef, ServiceAccountTokenSubject,
    SidecarOverrides, SubjectSource,
};

const PROFILE: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

use crate::policy::Policy;
use crate::testing::binding;

fn integration(name: &str, bindings: Vec<ProfileBinding>) -> CivicIntegration {
    let mut ci = CivicIntegration::new(
        name,
        CivicIntegrationSpec {
            client_id: "client-123".into(),
            client_secret_ref: SecretKeyRef {
                name: "civic-credentials".into(),
                key: "client-secret".into(),
            },
            hub_url: "https://app.civic.com/hub/mcp".into(),
            token_url: "https://auth.civic.com/oauth/token".into(),
            bindings,
            sidecar: None,
        },
    );
    ci.metadata.namespace = Some("team".into());
    ci.metadata.generation = Some(3);
    ci
}

fn pod(app: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("agent".into()),
            namespace: Some("team".into()),
            labels: Some(BTreeMap::from([
                ("app".to_string(), app.to_string()),
                (INJECT_LABEL.to_string(), INJECT_ENABLED.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("example/agent:1".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn env_of<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn sidecar_of(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == SIDECAR_CONTAINER)
        .expect("a sidecar")
}

#[test]
fn native_sidecar_is_an_init_container_with_a_startup_probe() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let out = inject(
        &pod("agent"),
        &ci,
        &ci.spec.bindings[0],
        &InjectDefaults::default(),
    )
    .unwrap();
    let spec = out.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init.len(), 1);
    let s = &init[0];
    assert_eq!(s.name, SIDECAR_CONTAINER);
    assert_eq!(s.restart_policy.as_deref(), Some("Always"));
    let startup = s.startup_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(startup.path.as_deref(), Some("/readyz"));
    assert_eq!(
        startup.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8932)
    );
    assert!(s.readiness_probe.is_none());
    assert_eq!(spec.containers.len(), 1, "no regular container added");
}

#[test]
fn legacy_sidecar_is_a_regular_container_after_the_app() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let defaults = InjectDefaults {
        mode: SidecarMode::Legacy,
        ..InjectDefaults::default()
    };
    let out = inject(&pod("agent"), &ci, &ci.spec.bindings[0], &defaults).unwrap();
    let spec = out.spec.as_ref().unwrap();
    assert!(spec.init_containers.is_none());
    assert_eq!(
        spec.containers[0].name, "app",
        "kubectl's default container stays the app"
    );
    let s = &spec.containers[1];
    assert_eq!(s.name, SIDECAR_CONTAINER);
    assert!(s.restart_policy.is_none());
    assert!(s.startup_probe.is_none());
    assert!(s.readiness_probe.is_some());
    assert_eq!(
        env_of(s, "CIVIC_MCP_URL"),
        None,
        "the sidecar is not an app container"
    );
}

#[test]
fn contract_env_vars_come_from_the_binding() {
    let mut b = binding("support", "agent");
    b.lock_profile = false;
    b.token_ttl_seconds = Some(900);
    b.scope = Some("openid profile".into());
    b.subject_token_type = Some("urn:ietf:params:oauth:token-type:id_token".into());
    let ci = integration("civic", vec![b]);
    let out = inject(
        &pod("agent"),
        &ci,
        &ci.spec.bindings[0],
        &InjectDefaults::default(),
    )
    .unwrap();
    let s = sidecar_of(&out);
    let expect = [
        (contract::ENV_LISTEN_ADDR, "127.0.0.1:8931"),
        (contract::ENV_ADMIN_ADDR, "0.0.0.0:8932"),
        (contract::ENV_LOG, "info"),
        (contract::ENV_HUB_URL, "https://app.civic.com/hub/mcp"),
        (contract::ENV_PROFILE_ID, PROFILE),
        (contract::ENV_PROFILE_LOCK, "false"),
        (
            contract::ENV_TOKEN_URL,
            "https://auth.civic.com/oauth/token",
        ),
        (contract::ENV_CLIENT_ID, "client-123"),
        (
            contract::ENV_CLIENT_SECRET_FILE,
            "/var/run/secrets/civic/client/client-secret",
        ),
        (
            contract::ENV_SUBJECT_TOKEN_FILE,
            "/var/run/secrets/civic/subject/token",
        ),
        (
            contract::ENV_SUBJECT_TOKEN_TYPE,
            "urn:ietf:params:oauth:token-type:id_token",
        ),
        (contract::ENV_TOKEN_TTL_SECONDS, "900"),
        (contract::ENV_SCOPE, "openid profile"),
    ];
    for (name, value) in expect {
        assert_eq!(env_of(s, name), Some(value), "{name}");
    }
    assert_eq!(s.env.as_ref().unwrap().len(), expect.len());
}

#[test]
fn ports_log_and_ca_come_from_the_defaults() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let defaults = InjectDefaults {
        proxy_port: 7001,
        admin_port: 7002,
        log: "debug".into(),
        ca_config_map: Some("corp-ca".into()),
        ..InjectDefaults::default()
    };
    let out = inject(&pod("agent"), &ci, &ci.spec.bindings[0], &defaults).unwrap();
    let s = sidecar_of(&out);
    assert_eq!(env_of(s, contract::ENV_LISTEN_ADDR), Some("127.0.0.1:7001"));
    assert_eq!(env_of(s, contract::ENV_ADMIN_ADDR), Some("0.0.0.0:7002"));
    assert_eq!(env_of(s, contract::ENV_LOG), Some("debug"));
    assert_eq!(
        env_of(s, contract::ENV_CA_FILE),
        Some("/var/run/civic/ca/ca.crt")
    );
    assert_eq!(s.ports.as_ref().unwrap()[0].container_port, 7002);
    let probe_port = &s
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap()
        .port;
    assert_eq!(
        *probe_port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(7002)
    );
    let app = &out.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        env_of(app, "CIVIC_MCP_URL"),
        Some("http://127.0.0.1:7001/hub/mcp")
    );
    let ca = out
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "civic-ca")
        .unwrap();
    assert_eq!(ca.config_map.as_ref().unwrap().name, "corp-ca");
    // The app's ports are checked against the configured ones.
    let mut p = pod("agent");
    p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
        container_port: 7002,
        ..ContainerPort::default()
    }]);
    assert!(matches!(
        inject(&p, &ci, &ci.spec.bindings[0], &defaults),
        Err(InjectError::PortConflict { port: 7002, .. })
    ));
}

#[test]
fn service_account_subject_gets_a_projected_token_with_the_binding_audience() {
    let mut b = binding("support", "agent");
    b.subject = SubjectSource::ServiceAccountToken(ServiceAccountTokenSubject {
        audience: "civic-auth".into(),
        expiration_seconds: 7200,
    });
    let ci = integration("civic", vec![b]);
    let out = inject(
        &pod("agent"),
        &ci,
        &ci.spec.bindings[0],
        &InjectDefaults::default(),
    )
    .unwrap();
    let volumes = out.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    let projected = volumes
        .iter()
        .find(|v| v.name == "civic-subject-token")
        .and_then(|v| v.projected.as_ref())
        .unwrap();
    let sat = projected.sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(sat.audience.as_deref(), Some("civic-auth"));
    assert_eq!(sat.expiration_seconds, Some(7200));
}

#[test]
fn secrets_are_mounted_read_only_into_the_sidecar_only() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let mut p = pod("agent");
    p.spec.as_mut().unwrap().containers.push(Container {
        name: "worker".into(),
        ..Container::default()
    });
    let out = inject(&p, &ci, &ci.spec.bindings[0], &InjectDefaults::default()).unwrap();
    let spec = out.spec.as_ref().unwrap();
    let secret = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "civic-client-secret")
        .and_then(|v| v.secret.as_ref())
        .unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("civic-credentials"));
    let items = secret.items.as_ref().unwrap();
    assert_eq!(items.len(), 1, "only the referenced key");
    assert_eq!(items[0].key, "client-secret");
    for app in &spec.containers {
        assert!(
            app.volume_mounts.is_none(),
            "{} mounts nothing of ours",
            app.name
        );
    }
    let mounts = sidecar_of(&out).volume_mounts.as_ref().unwrap();
    assert_eq!(
        mounts.len(),
        3,
        "client secret, subject token, empty API-token path"
    );
    assert!(mounts.iter().all(|m| m.read_only == Some(true)));
}

#[test]
fn static_token_mode_mounts_the_token_and_no_client_secret() {
    let mut b = binding("support", "agent");
    b.subject = SubjectSource::CivicTokenSecretRef(SecretKeyRef {
        name: "civic-token".into(),
        key: "token".into(),
    });
    let ci = integration("civic", vec![b]);
    let out = inject(
        &pod("agent"),
        &ci,
        &ci.spec.bindings[0],
        &InjectDefaults::default(),
    )
    .unwrap();
    let names: Vec<_> = out
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(names, ["civic-access-token", "civic-no-api-token"]);
    let s = sidecar_of(&out);
    assert_eq!(
        env_of(s, contract::ENV_ACCESS_TOKEN_FILE),
        Some("/var/run/secrets/civic/access/token")
    );
    assert_eq!(env_of(s, contract::ENV_CLIENT_ID), None);
    assert_eq!(env_of(s, contract::ENV_CLIENT_SECRET_FILE), None);
}

#[test]
fn request_header_mode_needs_no_token_volume() {
    let mut b = binding("support", "agent");
    b.subject = SubjectSource::RequestHeader(RequestHeaderSubject {
        name: "X-User-Token".into(),
    });
    let ci = integration("civic", vec![b]);
    let out = inject(
        &pod("agent"),
        &ci,
        &ci.spec.bindings[0],
        &InjectDefaults::default(),
    )
    .unwrap();
    let names: Vec<_> = out
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(names, ["civic-client-secret", "civic-no-api-token"]);
    assert_eq!(
        env_of(sidecar_of(&out), contract::ENV_SUBJECT_HEADER),
        Some("X-User-Token")
    );
}

#[test]
fn every_app_container_gets_the_mcp_url_unless_it_sets_one() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let mut p = pod("agent");
    p.spec.as_mut().unwrap().containers.push(Container {
        name: "custom".into(),
        env: Some(vec![EnvVar {
            name: "CIVIC_MCP_URL".into(),
            value: Some("http://elsewhere/hub/mcp".into()),
            value_from: None,
        }]),
        ..Container::default()
    });
    let out = inject(&p, &ci, &ci.spec.bindings[0], &InjectDefaults::default()).unwrap();
    let c = &out.spec.as_ref().unwrap().containers;
    assert_eq!(
        env_of(&c[0], "CIVIC_MCP_URL"),
        Some("http://127.0.0.1:8931/hub/mcp")
    );
    assert_eq!(
        env_of(&c[1], "CIVIC_MCP_URL"),
        Some("http://elsewhere/hub/mcp")
    );
    assert_eq!(c[1].env.as_ref().unwrap().len(), 1);
}

#[test]
fn annotations_name_integration_binding_and_generation() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let out = inject(
        &pod("agent"),
        &ci,
        &ci.spec.bindings[0],
        &InjectDefaults::default(),
    )
    .unwrap();
    let a = out.metadata.annotations.as_ref().unwrap();
    assert_eq!(a[INJECTED_ANNOTATION], "civic/support");
    assert_eq!(a[INJECTED_GENERATION_ANNOTATION], "3");
    assert_eq!(
        out.metadata.labels.as_ref().unwrap()[INJECT_LABEL],
        INJECT_ENABLED
    );
}

#[test]
fn security_context_meets_restricted() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let out = inject(
        &pod("agent"),
        &ci,
        &ci.spec.bindings[0],
        &InjectDefaults::default(),
    )
    .unwrap();
    let sc = sidecar_of(&out).security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
}

#[test]
fn integration_overrides_image_and_resources() {
    let mut ci = integration("civic", vec![binding("support", "agent")]);
    let resources = k8s_openapi::api::core::v1::ResourceRequirements::default();
    ci.spec.sidecar = Some(SidecarOverrides {
        image: Some("registry.local/sidecar:dev".into()),
        resources: Some(resources.clone()),
    });
    let out = inject(
        &pod("agent"),
        &ci,
        &ci.spec.bindings[0],
        &InjectDefaults::default(),
    )
    .unwrap();
    let s = sidecar_of(&out);
    assert_eq!(s.image.as_deref(), Some("registry.local/sidecar:dev"));
    assert_eq!(s.resources.as_ref(), Some(&resources));
    let out = inject(
        &pod("agent"),
        &integration("civic", vec![binding("support", "agent")]),
        &binding("support", "agent"),
        &InjectDefaults::default(),
    )
    .unwrap();
    assert_eq!(
        sidecar_of(&out).resources.as_ref(),
        Some(&default_resources())
    );
    assert_eq!(
        sidecar_of(&out).image.as_deref(),
        Some(DEFAULT_SIDECAR_IMAGE)
    );
}

#[test]
fn names_mounted_ahead_of_time_are_not_given_to_injected_volumes() {
    // A workload container mounting `civic-client-secret` with no such volume (the pod would be
    // invalid) must not end up mounting the injected client secret.
    let ci = integration("civic", vec![binding("support", "agent")]);
    let mut p = pod("agent");
    let spec = p.spec.as_mut().unwrap();
    spec.containers[0].volume_mounts = Some(vec![VolumeMount {
        name: "civic-client-secret".into(),
        mount_path: "/etc/app/civic".into(),
        ..VolumeMount::default()
    }]);
    let out = inject(&p, &ci, &ci.spec.bindings[0], &InjectDefaults::default()).unwrap();
    let secret_volume = out
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.is_some())
        .expect("the client secret volume")
        .name
        .clone();
    assert_eq!(secret_volume, "civic-client-secret-1");
    for c in &out.spec.as_ref().unwrap().containers {
        if c.name != SIDECAR_CONTAINER {
            assert!(
                c.volume_mounts
                    .iter()
                    .flatten()
                    .all(|m| m.name != secret_volume),
                "{} mounts the client secret",
                c.name
            );
        }
    }
}

#[test]
fn taken_volume_names_get_a_suffix() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let mut p = pod("agent");
    p.spec.as_mut().unwrap().volumes = Some(vec![
        Volume {
            name: "civic-client-secret".into(),
            ..Volume::default()
        },
        Volume {
            name: "civic-client-secret-1".into(),
            ..Volume::default()
        },
    ]);
    let out = inject(&p, &ci, &ci.spec.bindings[0], &InjectDefaults::default()).unwrap();
    let names: Vec<_> = out
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "civic-client-secret",
            "civic-client-secret-1",
            "civic-client-secret-2",
            "civic-subject-token",
            "civic-no-api-token"
        ]
    );
    let mounts: Vec<_> = sidecar_of(&out)
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        mounts,
        [
            "civic-client-secret-2",
            "civic-subject-token",
            "civic-no-api-token"
        ]
    );
}

#[test]
fn the_sidecar_gets_no_api_token_in_either_mode() {
    use super::volumes::API_TOKEN_DIR;
    let ci = integration("civic", vec![binding("support", "agent")]);
    for mode in [SidecarMode::Native, SidecarMode::Legacy] {
        let defaults = InjectDefaults {
            mode,
            ..InjectDefaults::default()
        };
        let out = inject(&pod("agent"), &ci, &ci.spec.bindings[0], &defaults).unwrap();
        let spec = out.spec.as_ref().unwrap();
        let over: Vec<_> = sidecar_of(&out)
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path == API_TOKEN_DIR)
            .collect();
        assert_eq!(over.len(), 1, "{mode:?}");
        assert_eq!(over[0].read_only, Some(true));
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == over[0].name)
            .unwrap();
        assert!(volume.empty_dir.is_some(), "{volume:?}");
        // App containers keep whatever the ServiceAccount plugin gives them.
        for app in spec
            .containers
            .iter()
            .filter(|c| c.name != SIDECAR_CONTAINER)
        {
            assert!(
                app.volume_mounts
                    .iter()
                    .flatten()
                    .all(|m| m.mount_path != API_TOKEN_DIR)
            );
        }
    }
}

#[test]
fn injecting_twice_changes_nothing() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    for mode in [SidecarMode::Native, SidecarMode::Legacy] {
        let defaults = InjectDefaults {
            mode,
            ..InjectDefaults::default()
        };
        let once = inject(&pod("agent"), &ci, &ci.spec.bindings[0], &defaults).unwrap();
        assert!(is_injected(&once));
        let twice = inject(&once, &ci, &ci.spec.bindings[0], &defaults).unwrap();
        assert_eq!(once, twice, "{mode:?}");
        assert!(patch(&once, &twice).unwrap().0.is_empty());
    }
}

#[test]
fn reinvocation_adds_the_url_to_containers_added_since() {
    let mut b = binding("support", "agent");
    b.profiles = vec![crate::crd::NamedProfile {
        name: "billing-tools".into(),
        profile_id: "c1f0e9d8-2b3a-4c5d-8e7f-a0b1c2d3e4f5".into(),
    }];
    let ci = integration("civic", vec![b]);
    let mut once = inject(
        &pod("agent"),
        &ci,
        &ci.spec.bindings[0],
        &InjectDefaults::default(),
    )
    .unwrap();
    once.spec.as_mut().unwrap().containers.push(Container {
        name: "added-later".into(),
        ..Container::default()
    });
    let again = inject(&once, &ci, &ci.spec.bindings[0], &InjectDefaults::default()).unwrap();
    let spec = again.spec.as_ref().unwrap();
    assert_eq!(
        spec.init_containers.as_ref().unwrap().len(),
        1,
        "never a second sidecar"
    );
    assert_eq!(
        env_of(&spec.containers[1], "CIVIC_MCP_URL"),
        Some("http://127.0.0.1:8931/hub/mcp")
    );
    // Named profiles come from the injected sidecar's own CIVIC_PROFILES.
    assert_eq!(
        env_of(&spec.containers[1], "CIVIC_MCP_URL_BILLING_TOOLS"),
        Some("http://127.0.0.1:8931/profiles/billing-tools/hub/mcp")
    );
    assert_eq!(
        complete_injected(&once, &InjectDefaults::default()),
        again,
        "the webhook's reinvocation path agrees"
    );
}

#[test]
fn preset_markers_are_refused_and_real_ones_accepted() {
    let ci = integration(
        "civic",
        vec![binding("support", "agent"), binding("other", "x")],
    );
    let defaults = InjectDefaults::default();
    let once = inject(&pod("agent"), &ci, &ci.spec.bindings[0], &defaults).unwrap();
    assert_eq!(
        inject(&once, &ci, &ci.spec.bindings[0], &defaults).unwrap(),
        once,
        "our own markers pass"
    );
    let edit = |f: &dyn Fn(&mut Pod)| {
        let mut p = once.clone();
        f(&mut p);
        inject(&p, &ci, &ci.spec.bindings[0], &defaults).unwrap_err()
    };
    let with_sidecar = |f: &dyn Fn(&mut Container)| {
        edit(&|p: &mut Pod| {
            let c = p
                .spec
                .as_mut()
                .unwrap()
                .init_containers
                .iter_mut()
                .flatten()
                .find(|c| c.name == SIDECAR_CONTAINER)
                .unwrap();
            f(c);
        })
    };
    for (err, part) in [
        (
            with_sidecar(&|c| c.image = Some("example.com/evil:1".into())),
            "image, command or args",
        ),
        (
            with_sidecar(&|c| c.args = Some(vec!["--hub-url=https://evil.example".into()])),
            "image, command or args",
        ),
        (
            with_sidecar(&|c| {
                c.env.as_mut().unwrap().push(EnvVar {
                    name: "CIVIC_TOKEN_URL".into(),
                    value: Some("https://evil.example/token".into()),
                    value_from: None,
                })
            }),
            "CIVIC_* environment",
        ),
        (
            with_sidecar(&|c| c.security_context = None),
            "securityContext",
        ),
        (
            edit(&|p: &mut Pod| {
                let v = p.spec.as_mut().unwrap().volumes.as_mut().unwrap();
                let secret = v
                    .iter_mut()
                    .find(|v| v.name == "civic-client-secret")
                    .unwrap();
                secret.secret.as_mut().unwrap().secret_name = Some("someone-elses".into());
            }),
            "its volumes",
        ),
        (
            edit(&|p: &mut Pod| {
                p.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .insert(INJECTED_ANNOTATION.into(), "civic/other".into());
            }),
            "another binding",
        ),
    ] {
        assert!(
            matches!(err, InjectError::PresetMarkers { .. }) && err.to_string().contains(part),
            "{part}: {err}"
        );
    }
    // What other webhooks add to every container (env, mounts) does not count.
    let mut decorated = once.clone();
    for c in decorated
        .spec
        .as_mut()
        .unwrap()
        .init_containers
        .iter_mut()
        .flatten()
    {
        c.env.get_or_insert_default().push(EnvVar {
            name: "DD_AGENT_HOST".into(),
            value: Some("10.0.0.1".into()),
            value_from: None,
        });
    }
    assert!(inject(&decorated, &ci, &ci.spec.bindings[0], &defaults).is_ok());
}

#[test]
fn a_foreign_container_named_like_the_sidecar_is_refused() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let mut p = pod("agent");
    p.spec.as_mut().unwrap().containers[0].name = SIDECAR_CONTAINER.into();
    let err = inject(&p, &ci, &ci.spec.bindings[0], &InjectDefaults::default()).unwrap_err();
    assert_eq!(err, InjectError::ReservedName);
    assert!(err.to_string().contains("rename"), "{err}");
}

#[test]
fn host_network_and_port_clashes_are_refused() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let mut p = pod("agent");
    p.spec.as_mut().unwrap().host_network = Some(true);
    let err = inject(&p, &ci, &ci.spec.bindings[0], &InjectDefaults::default()).unwrap_err();
    assert_eq!(err, InjectError::HostNetwork);
    assert!(err.to_string().contains("remove hostNetwork"), "{err}");

    let mut p = pod("agent");
    p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
        container_port: 8931,
        ..ContainerPort::default()
    }]);
    let err = inject(&p, &ci, &ci.spec.bindings[0], &InjectDefaults::default()).unwrap_err();
    assert_eq!(
        err,
        InjectError::PortConflict {
            container: "app".into(),
            port: 8931
        }
    );
}

#[test]
fn the_patch_only_adds() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    let mut p = pod("agent");
    p.metadata.annotations = Some(BTreeMap::from([("x".to_string(), "y".to_string())]));
    p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
        name: "migrate".into(),
        ..Container::default()
    }]);
    let out = inject(&p, &ci, &ci.spec.bindings[0], &InjectDefaults::default()).unwrap();
    let ops = patch(&p, &out).unwrap();
    let v = serde_json::to_value(&ops).unwrap();
    for op in v.as_array().unwrap() {
        assert_eq!(op["op"], "add", "{op}");
    }
    let paths: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/spec/initContainers/1"), "{paths:?}");
    assert!(
        paths.contains(&"/metadata/annotations/mcp.civic.com~1injected"),
        "{paths:?}"
    );
    // Applying the patch to the original reproduces the injected pod.
    let mut doc = serde_json::to_value(&p).unwrap();
    json_patch::patch(&mut doc, &ops).unwrap();
    assert_eq!(doc, serde_json::to_value(&out).unwrap());
}

#[test]
fn server_version_chooses_the_mode() {
    assert_eq!(
        SidecarMode::for_server_version("1", "20"),
        Some(SidecarMode::Legacy)
    );
    assert_eq!(
        SidecarMode::for_server_version("1", "28+"),
        Some(SidecarMode::Legacy)
    );
    assert_eq!(
        SidecarMode::for_server_version("1", "29"),
        Some(SidecarMode::Native)
    );
    assert_eq!(
        SidecarMode::for_server_version("1", "33+"),
        Some(SidecarMode::Native)
    );
    assert_eq!(
        SidecarMode::for_server_version("2", "0"),
        Some(SidecarMode::Native)
    );
    assert_eq!(SidecarMode::for_server_version("", "x"), None);
}

// --- binding choice -------------------------------------------------------------------------

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), app.to_string())])
}

#[test]
fn first_matching_binding_of_the_namespace_wins() {
    let a = integration(
        "civic",
        vec![
            binding("other", "x"),
            binding("support", "agent"),
            binding("later", "agent"),
        ],
    );
    let mut elsewhere = integration("aaa", vec![binding("support", "agent")]);
    elsewhere.metadata.namespace = Some("other-team".into());
    let list = [elsewhere, a];
    let s = select(&labels("agent"), &BTreeMap::new(), Some("team"), &list)
        .unwrap()
        .unwrap();
    assert_eq!(s.integration.metadata.name.as_deref(), Some("civic"));
    assert_eq!(s.binding.name, "support");
    assert!(
        select(&labels("nobody"), &BTreeMap::new(), Some("team"), &list)
            .unwrap()
            .is_none()
    );
}

#[test]
fn several_integrations_matching_is_ambiguous() {
    let list = [
        integration("b", vec![binding("two", "agent")]),
        integration("a", vec![binding("one", "agent")]),
    ];
    let err = select(&labels("agent"), &BTreeMap::new(), Some("team"), &list).unwrap_err();
    assert_eq!(
        err,
        SelectError::Ambiguous {
            candidates: "a/one, b/two".into()
        }
    );
    assert!(err.to_string().contains("mcp.civic.com/binding"), "{err}");
    // The annotation settles it among the bindings that select the pod, and no further:
    // it cannot reach a binding whose selector does not match.
    let ann = BTreeMap::from([(BINDING_ANNOTATION.to_string(), "b/two".to_string())]);
    let s = select(&labels("agent"), &ann, Some("team"), &list)
        .unwrap()
        .unwrap();
    assert_eq!(s.binding.name, "two");
    let err = select(&labels("zzz"), &ann, Some("team"), &list).unwrap_err();
    assert_eq!(
        err,
        SelectError::NotSelected {
            integration: "b".into(),
            binding: "two".into()
        }
    );
    assert!(
        err.to_string().contains("does not select this pod"),
        "{err}"
    );
}

#[test]
fn bad_annotations_say_what_to_fix() {
    let list = [integration("civic", vec![binding("support", "agent")])];
    let ann = |v: &str| BTreeMap::from([(BINDING_ANNOTATION.to_string(), v.to_string())]);
    assert!(matches!(
        select(&labels("agent"), &ann("civic"), Some("team"), &list),
        Err(SelectError::MalformedAnnotation(_))
    ));
    let err = select(&labels("agent"), &ann("nope/support"), Some("team"), &list).unwrap_err();
    assert!(
        matches!(err, SelectError::IntegrationNotFound { .. }),
        "{err}"
    );
    let err = select(&labels("agent"), &ann("civic/nope"), Some("team"), &list).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CivicIntegration \"civic\" has no binding \"nope\" (it has: support); fix the annotation \
         mcp.civic.com/binding"
    );
}

fn with_ready(mut ci: CivicIntegration, status: &str, generation: Option<i64>) -> CivicIntegration {
    let condition: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition =
        serde_json::from_value(json!({
            "type": "Ready", "status": status, "reason": "SecretNotFound",
            "message": "Secret \"civic-credentials\" not found in namespace \"team\"",
            "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z",
        }))
        .unwrap();
    ci.status = Some(crate::crd::CivicIntegrationStatus {
        observed_generation: generation,
        conditions: vec![condition],
        bindings: vec![],
    });
    ci
}

#[test]
fn readiness_decides_deny_warn_or_inject() {
    let ci = integration("civic", vec![binding("support", "agent")]);
    assert!(
        matches!(
            usable(&ci, true, &Policy::default()),
            Ok(Usable::Unverified { .. })
        ),
        "no status yet"
    );
    assert_eq!(
        usable(
            &with_ready(ci.clone(), "True", Some(3)),
            true,
            &Policy::default()
        ),
        Ok(Usable::Ready)
    );
    let err = usable(
        &with_ready(ci.clone(), "False", Some(3)),
        true,
        &Policy::default(),
    )
    .unwrap_err();
    assert!(matches!(err, UnusableError::NotReady { .. }));
    assert!(err.to_string().contains("SecretNotFound"), "{err}");
    assert!(
        matches!(
            usable(
                &with_ready(ci.clone(), "False", Some(2)),
                true,
                &Policy::default()
            ),
            Ok(Usable::Unverified { .. })
        ),
        "a verdict about an older generation is stale"
    );
    assert!(matches!(
        usable(
            &with_ready(ci.clone(), "Unknown", Some(3)),
            true,
            &Policy::default()
        ),
        Ok(Usable::Unverified { .. })
    ));
    assert_eq!(
        usable(&with_ready(ci, "False", Some(3)), false, &Policy::default()),
        Ok(Usable::Ready),
        "CLI"
    );

    let mut invalid = integration("civic", vec![binding("support", "agent")]);
    invalid.spec.token_url = "http://auth.example.com/token".into();
    let err = usable(&invalid, false, &Policy::default()).unwrap_err();
    assert!(err.to_string().contains("spec.tokenUrl"), "{err}");
}
