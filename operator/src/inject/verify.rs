//! Telling this operator's injection from markers a pod author preset.
//!
//! A pod reaches injection already carrying the `mcp.civic.com/injected` annotation and a
//! `civic-sidecar` container on a webhook reinvocation (our own patch, seen again) or when its
//! template was rendered by `civic-operator inject`. A pod author could also write them by hand,
//! to skip injection and be counted as injected. The markers are accepted only when they are
//! exactly what the binding injects now: the pod without them, injected again, must give the
//! same sidecar, with the same volumes.
//!
//! Compared: what the sidecar runs (image, command, args, its `CIVIC_*` environment, ports,
//! probes, security context) and its `civic-*` mounts with their volumes. Not compared, because
//! other admission plugins and webhooks legitimately change them after us: other environment
//! variables and mounts, resources, and whether it sits in `initContainers` (a template
//! rendered for the other sidecar mode).

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Volume, VolumeMount};
use kube::ResourceExt;

use super::{InjectDefaults, InjectError, SIDECAR_CONTAINER, inject, sidecars};
use crate::annotations::{INJECTED_ANNOTATION, INJECTED_GENERATION_ANNOTATION, binding_ref};
use crate::crd::{CivicIntegration, ProfileBinding};

/// `Ok` when `pod`'s markers are what injecting `binding` gives; otherwise which part differs.
pub(super) fn injected_by(
    pod: &Pod,
    integration: &CivicIntegration,
    binding: &ProfileBinding,
    defaults: &InjectDefaults,
) -> Result<(), InjectError> {
    let want_ref = binding_ref(
        integration.metadata.name.as_deref().unwrap_or_default(),
        &binding.name,
    );
    let mismatch = |differs| InjectError::PresetMarkers {
        binding: want_ref.clone(),
        differs,
    };
    if pod.annotations().get(INJECTED_ANNOTATION) != Some(&want_ref) {
        return Err(mismatch("the annotation names another binding"));
    }
    let found: Vec<&Container> = pod.spec.iter().flat_map(sidecars).collect();
    let [actual] = found[..] else {
        return Err(mismatch("more than one civic-sidecar container"));
    };
    let expected_pod = inject(
        &without_markers(pod, actual),
        integration,
        binding,
        defaults,
    )?;
    let expected = expected_pod
        .spec
        .iter()
        .flat_map(sidecars)
        .next()
        .expect("inject adds the sidecar");

    let same = |a: &Container, b: &Container| -> Option<&'static str> {
        if a.image != b.image || a.command != b.command || a.args != b.args {
            return Some("image, command or args");
        }
        if civic_env(a) != civic_env(b) {
            return Some("its CIVIC_* environment");
        }
        if a.ports != b.ports
            || a.startup_probe != b.startup_probe
            || a.liveness_probe != b.liveness_probe
            || a.readiness_probe != b.readiness_probe
        {
            return Some("ports or probes");
        }
        if a.security_context != b.security_context {
            return Some("its securityContext");
        }
        None
    };
    if let Some(differs) = same(actual, expected) {
        return Err(mismatch(differs));
    }
    let mounted = |pod: &Pod, c: &Container| -> Vec<(VolumeMount, Option<Volume>)> {
        let mut mounts: Vec<(VolumeMount, Option<Volume>)> = ours(c)
            .map(|m| {
                let volume = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .and_then(|vs| vs.iter().find(|v| v.name == m.name))
                    .cloned();
                (m.clone(), volume)
            })
            .collect();
        mounts.sort_by(|a, b| a.0.mount_path.cmp(&b.0.mount_path));
        mounts
    };
    if mounted(pod, actual) != mounted(&expected_pod, expected) {
        return Err(mismatch("its volumes"));
    }
    Ok(())
}

fn civic_env(c: &Container) -> Vec<&EnvVar> {
    c.env
        .iter()
        .flatten()
        .filter(|e| e.name.starts_with("CIVIC_"))
        .collect()
}

/// The sidecar's own mounts: `civic-*` volumes.
fn ours(c: &Container) -> impl Iterator<Item = &VolumeMount> {
    c.volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name.starts_with("civic-"))
}

/// `pod` as it was before injection: no sidecar, none of its `civic-*` volumes, no markers.
fn without_markers(pod: &Pod, sidecar: &Container) -> Pod {
    let mut out = pod.clone();
    let our_volumes: Vec<String> = ours(sidecar).map(|m| m.name.clone()).collect();
    if let Some(spec) = out.spec.as_mut() {
        spec.containers.retain(|c| c.name != SIDECAR_CONTAINER);
        if let Some(init) = spec.init_containers.as_mut() {
            init.retain(|c| c.name != SIDECAR_CONTAINER);
            if init.is_empty() {
                spec.init_containers = None;
            }
        }
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| !our_volumes.contains(&v.name));
            if volumes.is_empty() {
                spec.volumes = None;
            }
        }
    }
    let annotations = out.annotations_mut();
    annotations.remove(INJECTED_ANNOTATION);
    annotations.remove(INJECTED_GENERATION_ANNOTATION);
    out
}
