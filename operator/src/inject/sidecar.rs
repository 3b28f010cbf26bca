//! The sidecar container: image, contract env vars, probes on the admin port, and a security
//! context that meets the `restricted` Pod Security Standard.

use civic_sidecar::contract;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, Probe, SeccompProfile,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::volumes::Mounts;
use super::{InjectDefaults, SIDECAR_CONTAINER, SidecarMode};
use crate::crd::{CivicIntegration, ProfileBinding, SubjectSource};

/// The distroless `nonroot` user the sidecar image runs as.
pub const SIDECAR_UID: i64 = 65532;
/// Name of the admin port (metrics scraping).
pub const ADMIN_PORT_NAME: &str = "civic-admin";

pub fn container(
    integration: &CivicIntegration,
    binding: &ProfileBinding,
    defaults: &InjectDefaults,
    mounts: &Mounts,
) -> Container {
    let overrides = integration.spec.sidecar.as_ref();
    let image = overrides
        .and_then(|s| s.image.clone())
        .unwrap_or_else(|| defaults.image.clone());
    let resources = overrides
        .and_then(|s| s.resources.clone())
        .unwrap_or_else(|| defaults.resources.clone());
    let native = defaults.mode == SidecarMode::Native;
    let admin = defaults.admin_port;
    Container {
        name: SIDECAR_CONTAINER.to_owned(),
        image: Some(image),
        image_pull_policy: Some(defaults.image_pull_policy.clone()),
        env: Some(env(integration, binding, defaults, mounts)),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.to_owned()),
            container_port: i32::from(defaults.admin_port),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(resources),
        security_context: Some(security_context()),
        // Native: the kubelet starts the app containers once this passes (first token minted
        // where one can be minted at start). Legacy has no such ordering; readiness only.
        startup_probe: native.then(|| probe("/readyz", admin, 1, 120)),
        readiness_probe: (!native).then(|| probe("/readyz", admin, 2, 3)),
        liveness_probe: Some(probe("/livez", admin, 10, 3)),
        restart_policy: native.then(|| "Always".to_owned()),
        volume_mounts: Some(mounts.volume_mounts.clone()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

fn var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The contract env vars, in a fixed order.
fn env(
    integration: &CivicIntegration,
    binding: &ProfileBinding,
    defaults: &InjectDefaults,
    mounts: &Mounts,
) -> Vec<EnvVar> {
    let spec = &integration.spec;
    let mut env = vec![
        var(
            contract::ENV_LISTEN_ADDR,
            format!("127.0.0.1:{}", defaults.proxy_port),
        ),
        var(
            contract::ENV_ADMIN_ADDR,
            format!("0.0.0.0:{}", defaults.admin_port),
        ),
        var(contract::ENV_LOG, &defaults.log),
        var(contract::ENV_HUB_URL, &spec.hub_url),
        var(contract::ENV_PROFILE_ID, &binding.profile_id),
    ];
    if !binding.profiles.is_empty() {
        env.push(var(
            contract::ENV_PROFILES,
            civic_sidecar::profiles::render(
                binding
                    .profiles
                    .iter()
                    .map(|p| (p.name.as_str(), p.profile_id.as_str())),
            ),
        ));
    }
    if let Some(path) = &mounts.ca_file {
        env.push(var(contract::ENV_CA_FILE, path));
    }
    if let Some(path) = &mounts.access_token_file {
        // A ready Civic token: no exchange, so no client credentials or exchange parameters.
        env.push(var(contract::ENV_ACCESS_TOKEN_FILE, path));
        return env;
    }
    env.push(var(
        contract::ENV_PROFILE_LOCK,
        binding.lock_profile.to_string(),
    ));
    env.push(var(contract::ENV_TOKEN_URL, &spec.token_url));
    env.push(var(contract::ENV_CLIENT_ID, &spec.client_id));
    if let Some(path) = &mounts.client_secret_file {
        env.push(var(contract::ENV_CLIENT_SECRET_FILE, path));
    }
    match &binding.subject {
        SubjectSource::RequestHeader(h) => env.push(var(contract::ENV_SUBJECT_HEADER, &h.name)),
        SubjectSource::ServiceAccountToken(_) | SubjectSource::CivicTokenSecretRef(_) => {
            if let Some(path) = &mounts.subject_token_file {
                env.push(var(contract::ENV_SUBJECT_TOKEN_FILE, path));
            }
        }
    }
    if let Some(t) = &binding.subject_token_type {
        env.push(var(contract::ENV_SUBJECT_TOKEN_TYPE, t));
    }
    if let Some(ttl) = binding.token_ttl_seconds {
        env.push(var(contract::ENV_TOKEN_TTL_SECONDS, ttl.to_string()));
    }
    if let Some(scope) = &binding.scope {
        env.push(var(contract::ENV_SCOPE, scope));
    }
    env
}

fn probe(path: &str, port: u16, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(port)),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// Everything `restricted` asks of a container, and a read-only root filesystem.
fn security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(SIDECAR_UID),
        run_as_group: Some(SIDECAR_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}
