//! Sidecar injection as a pure function: `(Pod, CivicIntegration, binding, defaults) → Pod`, and
//! the RFC 6902 JSON patch between the two. The admission webhook and `civic-operator inject`
//! both call [`inject`], so what the CLI prints is exactly what the webhook does.
//!
//! What [`inject`] adds to a pod (docs/architecture.md §4):
//! - the sidecar container [`SIDECAR_CONTAINER`]: a native sidecar (appended to the init
//!   containers with `restartPolicy: Always` and a startup probe on the admin `/readyz`, so app
//!   containers start only once it can serve), or, in [`SidecarMode::Legacy`] for clusters
//!   before 1.29, a regular container appended to the containers with a readiness probe;
//! - its contract env vars (`civic_sidecar::contract`) from the integration and binding;
//! - read-only volumes mounted only into the sidecar: the client secret (only the referenced
//!   key), the projected service-account token (binding audience and lifetime) or the static
//!   Civic token;
//! - `CIVIC_MCP_URL=http://127.0.0.1:8931/hub/mcp` in every app container that does not set
//!   `CIVIC_MCP_URL` itself (an explicit value is the workload's choice and is kept);
//! - the opt-in label and the annotations naming integration, binding and generation.
//!
//! Idempotent: a pod that already carries the sidecar and the injected annotation only gets
//! `CIVIC_MCP_URL` in app containers that lack it (another webhook may have added containers
//! since; `reinvocationPolicy: IfNeeded`), never a second sidecar.
//!
//! Changes are appends only (new array elements, new keys), so the patch consists of `add`
//! operations and never moves a field the operator's Rust types do not know about.

pub mod command;
mod patch;
pub mod select;
mod sidecar;
mod verify;
mod volumes;
pub mod workload;

use std::collections::BTreeMap;

use civic_sidecar::contract;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use crate::annotations::{
    INJECT_ENABLED, INJECT_LABEL, INJECTED_ANNOTATION, INJECTED_GENERATION_ANNOTATION, binding_ref,
};
use crate::crd::{CivicIntegration, ProfileBinding};

/// Name of the injected container.
pub const SIDECAR_CONTAINER: &str = "civic-sidecar";
/// Image used when neither a flag nor the integration names one.
pub const DEFAULT_SIDECAR_IMAGE: &str = concat!(
    "ghcr.io/civic-mcp/civic-sidecar:",
    env!("CARGO_PKG_VERSION")
);
/// First Kubernetes minor release (1.x) with native sidecars on by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// How the sidecar is added to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29): starts before the
    /// app containers, stops after them, does not keep a Job from completing.
    Native,
    /// A regular container (older clusters): the app may start before the sidecar is ready and
    /// a Job's pod does not complete while the sidecar runs.
    Legacy,
}

impl SidecarMode {
    /// The mode for an apiserver reporting `major`/`minor` (e.g. `"1"`, `"29+"`), or `None`
    /// when the version does not parse.
    pub fn for_server_version(major: &str, minor: &str) -> Option<Self> {
        let digits = |s: &str| -> Option<u32> {
            let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            s[..end].parse().ok()
        };
        let (major, minor) = (digits(major)?, digits(minor)?);
        Some(
            if major > 1 || (major == 1 && minor >= NATIVE_SIDECAR_MINOR) {
                SidecarMode::Native
            } else {
                SidecarMode::Legacy
            },
        )
    }
}

/// Cluster-wide sidecar settings (chart values, passed as flags); an integration's
/// `spec.sidecar` overrides image and resources.
#[derive(Clone, Debug, PartialEq)]
pub struct InjectDefaults {
    pub image: String,
    pub image_pull_policy: String,
    pub resources: ResourceRequirements,
    pub mode: SidecarMode,
    /// Port of the sidecar's proxy on 127.0.0.1 (`CIVIC_MCP_URL` points there).
    pub proxy_port: u16,
    /// Port of the sidecar's admin listener (probes, metrics).
    pub admin_port: u16,
    /// The sidecar's log filter (`CIVIC_LOG`).
    pub log: String,
    /// A ConfigMap in the pod's namespace whose key `ca.crt` the sidecar trusts besides the web
    /// roots (`CIVIC_CA_FILE`).
    pub ca_config_map: Option<String>,
    /// The operator's policy: a pod of an integration that breaks it gets no sidecar.
    pub policy: crate::policy::Policy,
}

impl Default for InjectDefaults {
    fn default() -> Self {
        Self {
            image: DEFAULT_SIDECAR_IMAGE.to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            resources: default_resources(),
            mode: SidecarMode::Native,
            proxy_port: contract::PROXY_PORT,
            admin_port: contract::ADMIN_PORT,
            log: contract::DEFAULT_LOG.to_owned(),
            ca_config_map: None,
            policy: crate::policy::Policy::default(),
        }
    }
}

/// Small requests and a memory limit; no CPU limit, so the proxy is never throttled.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("10m".to_owned())),
            ("memory".to_owned(), Quantity("16Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("64Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Why a pod cannot get the sidecar. Messages say what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error(
        "pods with hostNetwork: true cannot get the Civic sidecar (its loopback proxy would be \
         shared with the whole node); remove hostNetwork or the label {INJECT_LABEL}"
    )]
    HostNetwork,
    #[error(
        "container {container:?} declares port {port}, which the Civic sidecar uses in the pod's \
         network namespace; move the container to another port"
    )]
    PortConflict { container: String, port: i32 },
    #[error(
        "container name {SIDECAR_CONTAINER:?} is reserved for the Civic sidecar; rename the \
         container"
    )]
    ReservedName,
    #[error(
        "the pod already carries injection markers (annotation {INJECTED_ANNOTATION} and a \
         {SIDECAR_CONTAINER:?} container) that are not what binding {binding} injects \
         ({differs}); remove them and let the webhook inject the pod, or render it again with \
         `civic-operator inject`"
    )]
    PresetMarkers {
        binding: String,
        differs: &'static str,
    },
    #[error(
        "the pod already carries injection markers (annotation {INJECTED_ANNOTATION} and a \
         {SIDECAR_CONTAINER:?} container), but no binding of its namespace selects it, so they \
         are not this operator's; remove them"
    )]
    MarkersWithoutBinding,
    #[error("the pod has no spec")]
    MissingSpec,
    #[error("the CivicIntegration has no metadata.name")]
    UnnamedIntegration,
}

impl InjectError {
    /// Low-cardinality label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            InjectError::HostNetwork => "host_network",
            InjectError::PortConflict { .. } => "port_conflict",
            InjectError::ReservedName => "reserved_name",
            InjectError::PresetMarkers { .. } | InjectError::MarkersWithoutBinding => {
                "preset_markers"
            }
            InjectError::MissingSpec => "missing_spec",
            InjectError::UnnamedIntegration => "unnamed_integration",
        }
    }
}

/// Whether `pod` already carries this operator's sidecar.
pub fn is_injected(pod: &Pod) -> bool {
    pod.annotations().contains_key(INJECTED_ANNOTATION)
        && pod.spec.as_ref().is_some_and(has_sidecar)
}

fn has_sidecar(spec: &PodSpec) -> bool {
    sidecars(spec).next().is_some()
}

/// The pod's containers named like the sidecar, init containers first (native mode).
fn sidecars(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == SIDECAR_CONTAINER)
}

/// The pod with the sidecar of `binding` (a binding of `integration`) added. Pure: no I/O, no
/// clock. The caller chose the binding ([`select`]) and checked the integration is usable.
pub fn inject(
    pod: &Pod,
    integration: &CivicIntegration,
    binding: &ProfileBinding,
    defaults: &InjectDefaults,
) -> Result<Pod, InjectError> {
    let mut out = pod.clone();
    let annotated = pod.annotations().contains_key(INJECTED_ANNOTATION);
    let spec = out.spec.as_mut().ok_or(InjectError::MissingSpec)?;
    if has_sidecar(spec) {
        if !annotated {
            return Err(InjectError::ReservedName);
        }
        // A webhook reinvocation, or a pod rendered by `civic-operator inject`: accepted only
        // when the markers are exactly what this binding injects, so they cannot be preset.
        verify::injected_by(pod, integration, binding, defaults)?;
        return Ok(complete_injected(pod, defaults));
    }
    if spec.host_network == Some(true) {
        return Err(InjectError::HostNetwork);
    }
    check_ports(spec, defaults)?;
    let integration_name = integration
        .metadata
        .name
        .as_deref()
        .ok_or(InjectError::UnnamedIntegration)?;

    let mounts = volumes::add(spec, integration, binding, defaults);
    let container = sidecar::container(integration, binding, defaults, &mounts);
    match defaults.mode {
        SidecarMode::Native => spec.init_containers.get_or_insert_default().push(container),
        SidecarMode::Legacy => spec.containers.push(container),
    }
    add_workload_url(spec, defaults.proxy_port);

    let meta = &mut out.metadata;
    meta.labels
        .get_or_insert_default()
        .insert(INJECT_LABEL.to_owned(), INJECT_ENABLED.to_owned());
    let annotations = meta.annotations.get_or_insert_default();
    annotations.insert(
        INJECTED_ANNOTATION.to_owned(),
        binding_ref(integration_name, &binding.name),
    );
    match integration.metadata.generation {
        Some(g) => annotations.insert(INJECTED_GENERATION_ANNOTATION.to_owned(), g.to_string()),
        None => annotations.remove(INJECTED_GENERATION_ANNOTATION),
    };
    Ok(out)
}

/// An already injected pod with `CIVIC_MCP_URL` added to app containers that lack it
/// (containers another webhook added after ours, on reinvocation). Nothing else changes.
fn complete_injected(pod: &Pod, defaults: &InjectDefaults) -> Pod {
    let mut out = pod.clone();
    if let Some(spec) = out.spec.as_mut() {
        add_workload_url(spec, defaults.proxy_port);
    }
    out
}

/// The app's ports must not collide with the sidecar's, which share the pod network namespace.
fn check_ports(spec: &PodSpec, defaults: &InjectDefaults) -> Result<(), InjectError> {
    let ours = [
        i32::from(defaults.proxy_port),
        i32::from(defaults.admin_port),
    ];
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            if ours.contains(&p.container_port) {
                return Err(InjectError::PortConflict {
                    container: c.name.clone(),
                    port: p.container_port,
                });
            }
        }
    }
    Ok(())
}

/// `CIVIC_MCP_URL`, and `CIVIC_MCP_URL_<NAME>` for each named profile of the pod's sidecar
/// (read from its `CIVIC_PROFILES`, so a reinvocation needs no binding), in every app container
/// that does not set them already.
fn add_workload_url(spec: &mut PodSpec, proxy_port: u16) {
    let named = sidecars(spec)
        .next()
        .and_then(|c| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == contract::ENV_PROFILES)
        })
        .and_then(|e| e.value.as_deref())
        .unwrap_or_default();
    let mut urls = vec![(
        contract::WORKLOAD_MCP_URL_ENV.to_owned(),
        contract::workload_mcp_url(proxy_port),
    )];
    urls.extend(civic_sidecar::profiles::names(named).map(|name| {
        (
            civic_sidecar::profiles::url_env(name),
            civic_sidecar::profiles::workload_url(proxy_port, name),
        )
    }));
    for c in spec
        .containers
        .iter_mut()
        .filter(|c| c.name != SIDECAR_CONTAINER)
    {
        for (name, url) in &urls {
            if !sets_env(c, name) {
                c.env.get_or_insert_default().push(EnvVar {
                    name: name.clone(),
                    value: Some(url.clone()),
                    value_from: None,
                });
            }
        }
    }
}

fn sets_env(c: &Container, name: &str) -> bool {
    c.env.iter().flatten().any(|e| e.name == name)
}

pub use self::patch::patch;

#[cfg(test)]
mod tests;
