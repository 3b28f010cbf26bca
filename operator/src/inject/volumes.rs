//! The sidecar's volumes: client secret, projected service-account token, static Civic token,
//! and an empty one over the API-token path. Each is mounted read-only into the sidecar only;
//! names start with `civic-` and get a numeric suffix when the pod already uses the name.

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, KeyToPath, PodSpec, ProjectedVolumeSource,
    SecretVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};

use super::InjectDefaults;
use crate::crd::{CivicIntegration, ProfileBinding, SecretKeyRef, SubjectSource};

/// Directory of the client secret inside the sidecar.
pub const CLIENT_SECRET_DIR: &str = "/var/run/secrets/civic/client";
/// Directory of the projected service-account token inside the sidecar.
pub const SUBJECT_TOKEN_DIR: &str = "/var/run/secrets/civic/subject";
/// Directory of the static Civic token inside the sidecar.
pub const ACCESS_TOKEN_DIR: &str = "/var/run/secrets/civic/access";
/// File name of the client secret in [`CLIENT_SECRET_DIR`].
pub const CLIENT_SECRET_FILE: &str = "client-secret";
/// File name of the tokens in [`SUBJECT_TOKEN_DIR`] and [`ACCESS_TOKEN_DIR`].
pub const TOKEN_FILE: &str = "token";
/// Directory of the extra trusted CAs inside the sidecar.
pub const CA_DIR: &str = "/var/run/civic/ca";
/// Key of the CA ConfigMap, and file name in [`CA_DIR`].
pub const CA_FILE: &str = "ca.crt";
/// Where the ServiceAccount admission plugin mounts the pod's Kubernetes API token into every
/// container that has nothing mounted there yet.
pub const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Readable by the sidecar's non-root user; no other container mounts these volumes.
const FILE_MODE: i32 = 0o444;

/// Where the sidecar finds its files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mounts {
    pub volume_mounts: Vec<VolumeMount>,
    pub client_secret_file: Option<String>,
    pub subject_token_file: Option<String>,
    pub access_token_file: Option<String>,
    pub ca_file: Option<String>,
}

/// Adds the binding's volumes to `spec` and returns the sidecar's mounts.
pub fn add(
    spec: &mut PodSpec,
    integration: &CivicIntegration,
    binding: &ProfileBinding,
    defaults: &InjectDefaults,
) -> Mounts {
    let mut mounts = Mounts::default();
    let exchanges = !matches!(binding.subject, SubjectSource::CivicTokenSecretRef(_));
    if exchanges {
        let name = add_volume(spec, "civic-client-secret", |name| Volume {
            name,
            secret: Some(secret_source(
                &integration.spec.client_secret_ref,
                CLIENT_SECRET_FILE,
            )),
            ..Volume::default()
        });
        mounts.volume_mounts.push(mount(name, CLIENT_SECRET_DIR));
        mounts.client_secret_file = Some(format!("{CLIENT_SECRET_DIR}/{CLIENT_SECRET_FILE}"));
    }
    match &binding.subject {
        SubjectSource::ServiceAccountToken(sa) => {
            let name = add_volume(spec, "civic-subject-token", |name| Volume {
                name,
                projected: Some(ProjectedVolumeSource {
                    default_mode: Some(FILE_MODE),
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(sa.audience.clone()),
                            expiration_seconds: Some(sa.expiration_seconds),
                            path: TOKEN_FILE.to_owned(),
                        }),
                        ..VolumeProjection::default()
                    }]),
                }),
                ..Volume::default()
            });
            mounts.volume_mounts.push(mount(name, SUBJECT_TOKEN_DIR));
            mounts.subject_token_file = Some(format!("{SUBJECT_TOKEN_DIR}/{TOKEN_FILE}"));
        }
        SubjectSource::CivicTokenSecretRef(r) => {
            let name = add_volume(spec, "civic-access-token", |name| Volume {
                name,
                secret: Some(secret_source(r, TOKEN_FILE)),
                ..Volume::default()
            });
            mounts.volume_mounts.push(mount(name, ACCESS_TOKEN_DIR));
            mounts.access_token_file = Some(format!("{ACCESS_TOKEN_DIR}/{TOKEN_FILE}"));
        }
        SubjectSource::RequestHeader(_) => {}
    }
    if let Some(config_map) = &defaults.ca_config_map {
        let name = add_volume(spec, "civic-ca", |name| Volume {
            name,
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: CA_FILE.to_owned(),
                    path: CA_FILE.to_owned(),
                    mode: None,
                }]),
                default_mode: Some(FILE_MODE),
                optional: Some(false),
            }),
            ..Volume::default()
        });
        mounts.volume_mounts.push(mount(name, CA_DIR));
        mounts.ca_file = Some(format!("{CA_DIR}/{CA_FILE}"));
    }
    // The plugin runs again after this webhook's patch and would give the sidecar the pod's
    // API token, a credential the apiserver accepts and the sidecar never uses. An empty
    // read-only volume at that path makes it pass the sidecar over (app containers keep theirs).
    let name = add_volume(spec, "civic-no-api-token", |name| Volume {
        name,
        // No sizeLimit: the kubelet counts an empty directory's own block (4 KiB) as usage
        // and evicted the pod at a 1 KiB limit (seen on the node tier); the mount is
        // read-only, so nothing is ever written.
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    mounts.volume_mounts.push(mount(name, API_TOKEN_DIR));
    mounts
}

/// Only the referenced key, under a fixed file name.
fn secret_source(r: &SecretKeyRef, file: &str) -> SecretVolumeSource {
    SecretVolumeSource {
        secret_name: Some(r.name.clone()),
        items: Some(vec![KeyToPath {
            key: r.key.clone(),
            path: file.to_owned(),
            mode: None,
        }]),
        default_mode: Some(FILE_MODE),
        optional: Some(false),
    }
}

fn mount(name: String, path: &str) -> VolumeMount {
    VolumeMount {
        name,
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Appends a volume under `base`, or `base-1`, `base-2`, … when the name is taken: by a volume,
/// or by any container's mount or device, even a dangling one (else a workload container that
/// mounts `civic-client-secret` ahead of time would get the injected secret; found by fuzzing).
fn add_volume(spec: &mut PodSpec, base: &str, make: impl FnOnce(String) -> Volume) -> String {
    let mut used: std::collections::BTreeSet<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        used.extend(c.volume_mounts.iter().flatten().map(|m| m.name.clone()));
        used.extend(c.volume_devices.iter().flatten().map(|d| d.name.clone()));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        used.extend(c.volume_mounts.iter().flatten().map(|m| m.name.clone()));
        used.extend(c.volume_devices.iter().flatten().map(|d| d.name.clone()));
    }
    let taken = |n: &str| used.contains(n);
    let name = if taken(base) {
        (1..)
            .map(|i| format!("{base}-{i}"))
            .find(|n| !taken(n))
            .expect("an unbounded range always has a free name")
    } else {
        base.to_owned()
    };
    spec.volumes
        .get_or_insert_default()
        .push(make(name.clone()));
    name
}
