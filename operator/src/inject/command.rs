//! Flags for the sidecar defaults (shared by `run` and `inject`) and the `civic-operator inject`
//! command: read manifests, inject them, print them, report per object on stderr.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::ResourceRequirements;

use super::workload::{self, Outcome};
use super::{DEFAULT_SIDECAR_IMAGE, InjectDefaults, SidecarMode};
use crate::policy::{Policy, PolicyArgs};
use civic_sidecar::contract;

/// Default of `--sidecar-resources`.
pub const DEFAULT_RESOURCES_JSON: &str =
    r#"{"requests":{"cpu":"10m","memory":"16Mi"},"limits":{"memory":"64Mi"}}"#;

/// Sidecar defaults for every injected pod; an integration's `spec.sidecar` overrides image and
/// resources.
#[derive(Clone, Debug, Args)]
pub struct SidecarArgs {
    /// Sidecar container image.
    #[arg(long, env = "CIVIC_OPERATOR_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// Sidecar image pull policy.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_SIDECAR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub sidecar_image_pull_policy: String,

    /// Sidecar resources, as JSON or YAML (`{"requests": {...}, "limits": {...}}`).
    #[arg(
        long,
        env = "CIVIC_OPERATOR_SIDECAR_RESOURCES",
        default_value = DEFAULT_RESOURCES_JSON,
        value_parser = resources
    )]
    pub sidecar_resources: ResourceRequirements,

    /// Port of the sidecar's proxy on 127.0.0.1; apps get
    /// `CIVIC_MCP_URL=http://127.0.0.1:<port>/hub/mcp`.
    #[arg(long, env = "CIVIC_OPERATOR_SIDECAR_PORT", default_value_t = contract::PROXY_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub sidecar_port: u16,

    /// Port of the sidecar's admin listener (`/livez`, `/readyz`, `/metrics`).
    #[arg(long, env = "CIVIC_OPERATOR_SIDECAR_ADMIN_PORT", default_value_t = contract::ADMIN_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub sidecar_admin_port: u16,

    /// Log filter of injected sidecars.
    #[arg(long, env = "CIVIC_OPERATOR_SIDECAR_LOG", default_value = contract::DEFAULT_LOG)]
    pub sidecar_log: String,

    /// ConfigMap, in each pod's own namespace, whose key `ca.crt` the sidecar trusts besides
    /// the public web roots. Empty: none.
    #[arg(long, env = "CIVIC_OPERATOR_SIDECAR_CA_CONFIGMAP", default_value = "")]
    pub sidecar_ca_configmap: String,

    /// Where integrations may send credentials and which sidecar images they may name.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Resource requirements from JSON or YAML, every quantity checked.
fn resources(s: &str) -> Result<ResourceRequirements, String> {
    let r: ResourceRequirements =
        serde_yaml_ng::from_str(s).map_err(|e| format!("not resource requirements: {e}"))?;
    for (name, q) in r.requests.iter().chain(r.limits.iter()).flatten() {
        quantity(&q.0).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(r)
}

/// A Kubernetes quantity such as `10m`, `0.5`, `64Mi`, `1e3`.
fn quantity(s: &str) -> Result<(), String> {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.trim_start_matches(['+', '-']).parse::<f64>().is_ok()
        && !number[1..].contains(['+', '-']);
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.len() > 1
        && suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .trim_start_matches(['+', '-'])
            .parse::<u32>()
            .is_ok());
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes quantity (e.g. 10m, 0.5, 64Mi)"
        ))
    }
}

impl SidecarArgs {
    /// The defaults for `mode`.
    pub fn defaults(&self, mode: SidecarMode) -> InjectDefaults {
        InjectDefaults {
            image: self.sidecar_image.clone(),
            image_pull_policy: self.sidecar_image_pull_policy.clone(),
            resources: self.sidecar_resources.clone(),
            mode,
            proxy_port: self.sidecar_port,
            admin_port: self.sidecar_admin_port,
            log: self.sidecar_log.clone(),
            ca_config_map: Some(self.sidecar_ca_configmap.trim().to_owned())
                .filter(|s| !s.is_empty()),
            policy: self.policy(),
        }
    }

    /// The operator's policy; the default sidecar image's repository is allowed unless
    /// `--allowed-sidecar-images` says otherwise.
    pub fn policy(&self) -> Policy {
        Policy::new(&self.policy, &self.sidecar_image)
    }
}

/// `--sidecar-mode` of `run`: detected from the apiserver version unless forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Native sidecars when the apiserver is 1.29 or newer, else legacy.
    Auto,
    Native,
    Legacy,
}

/// `civic-operator inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifests to inject: Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
    /// CronJobs (multi-document YAML; `-` reads stdin). Other objects pass through unchanged.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,

    /// CivicIntegration manifests to choose bindings from (repeatable; multi-document YAML).
    #[arg(long = "integration", value_name = "FILE", required = true)]
    pub integrations: Vec<PathBuf>,

    /// How to add the sidecar: `native` for Kubernetes ≥ 1.29, `legacy` before.
    #[arg(long, value_enum, default_value = "native")]
    pub sidecar_mode: SidecarMode,

    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// Why `inject` could not run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: workload::ReadError,
    },
    #[error(transparent)]
    Write(#[from] workload::ReadError),
}

impl CommandError {
    pub fn category(&self) -> &'static str {
        match self {
            CommandError::Read { .. } => "read",
            CommandError::Parse { source, .. } => source.category(),
            CommandError::Write(_) => "write",
        }
    }
}

fn read(path: &PathBuf) -> Result<String, CommandError> {
    let shown = path.display().to_string();
    let result = if shown == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(path)
    };
    result.map_err(|source| CommandError::Read {
        path: shown,
        source,
    })
}

/// The injected manifests and one report line per object.
pub fn render(args: &InjectArgs) -> Result<(String, Vec<workload::Report>), CommandError> {
    let mut integrations = Vec::new();
    for path in &args.integrations {
        let text = read(path)?;
        integrations.extend(workload::read_integrations(&text).map_err(|source| {
            CommandError::Parse {
                path: path.display().to_string(),
                source,
            }
        })?);
    }
    let input = read(&args.file)?;
    let mut docs = workload::read_documents(&input).map_err(|source| CommandError::Parse {
        path: args.file.display().to_string(),
        source,
    })?;
    let defaults = args.sidecar.defaults(args.sidecar_mode);
    let reports = workload::inject_documents(&mut docs, &integrations, &defaults);
    Ok((workload::write_documents(&docs)?, reports))
}

/// Prints the injected manifests on stdout and the reports on stderr. Exit status 1 when an
/// object could not be injected (it is printed unchanged), 2 when the input is unreadable.
pub fn main(args: InjectArgs) -> ExitCode {
    match render(&args) {
        Ok((yaml, reports)) => {
            print!("{yaml}");
            for r in &reports {
                eprintln!("civic-operator inject: {r}");
            }
            if reports
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Failed(_)))
            {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("civic-operator inject: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sidecar: SidecarArgs,
    }

    fn parse(args: &[&str]) -> Result<SidecarArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.sidecar)
    }

    #[test]
    fn quantities() {
        for ok in ["10m", "0.5", "64Mi", "1", "1e3", "2Gi", "+1"] {
            assert!(quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["10 m", "Mi", "ten", "1.2.3", "5mb", "1-2", ""] {
            assert!(quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let d = parse(&[]).unwrap().defaults(SidecarMode::Native);
        assert_eq!(d, InjectDefaults::default());
    }

    #[test]
    fn resources_parse_from_json_or_yaml_and_are_checked() {
        let args = parse(&[
            "--sidecar-resources",
            "limits: {cpu: 500m}",
            "--sidecar-ca-configmap",
            "corp-ca",
        ])
        .unwrap();
        let d = args.defaults(SidecarMode::Legacy);
        assert!(d.resources.requests.is_none());
        assert_eq!(
            d.resources.limits,
            Some(BTreeMap::from([("cpu".into(), Quantity("500m".into()))]))
        );
        assert_eq!(d.ca_config_map.as_deref(), Some("corp-ca"));
        assert!(parse(&["--sidecar-resources", r#"{"limits":{"memory":"lots"}}"#]).is_err());
        assert!(parse(&["--sidecar-port", "0"]).is_err());
    }
}
