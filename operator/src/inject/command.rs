//! Flags for the sidecar defaults (shared by `run` and `inject`) and the `civic-operator inject`
//! command: read manifests, inject them, print them, report per object on stderr.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::workload::{self, Outcome};
use super::{DEFAULT_SIDECAR_IMAGE, InjectDefaults, SidecarMode};

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

    /// Sidecar CPU request (empty: none).
    #[arg(long, env = "CIVIC_OPERATOR_SIDECAR_CPU_REQUEST", default_value = "10m", value_parser = quantity)]
    pub sidecar_cpu_request: String,

    /// Sidecar memory request (empty: none).
    #[arg(long, env = "CIVIC_OPERATOR_SIDECAR_MEMORY_REQUEST", default_value = "16Mi", value_parser = quantity)]
    pub sidecar_memory_request: String,

    /// Sidecar CPU limit (empty: none, so the proxy is never throttled).
    #[arg(long, env = "CIVIC_OPERATOR_SIDECAR_CPU_LIMIT", default_value = "", value_parser = quantity)]
    pub sidecar_cpu_limit: String,

    /// Sidecar memory limit (empty: none).
    #[arg(long, env = "CIVIC_OPERATOR_SIDECAR_MEMORY_LIMIT", default_value = "64Mi", value_parser = quantity)]
    pub sidecar_memory_limit: String,
}

/// `""` or a Kubernetes quantity such as `10m`, `0.5`, `64Mi`, `1e3`.
fn quantity(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
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
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes quantity (e.g. 10m, 0.5, 64Mi)"
        ))
    }
}

impl SidecarArgs {
    /// The defaults for `mode`.
    pub fn defaults(&self, mode: SidecarMode) -> InjectDefaults {
        let pick = |pairs: [(&str, &str); 2]| {
            let map: BTreeMap<String, Quantity> = pairs
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
                .collect();
            (!map.is_empty()).then_some(map)
        };
        InjectDefaults {
            image: self.sidecar_image.clone(),
            image_pull_policy: self.sidecar_image_pull_policy.clone(),
            resources: ResourceRequirements {
                requests: pick([
                    ("cpu", &self.sidecar_cpu_request),
                    ("memory", &self.sidecar_memory_request),
                ]),
                limits: pick([
                    ("cpu", &self.sidecar_cpu_limit),
                    ("memory", &self.sidecar_memory_limit),
                ]),
                ..ResourceRequirements::default()
            },
            mode,
        }
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

    #[test]
    fn quantities() {
        for ok in ["10m", "0.5", "64Mi", "1", "1e3", "2Gi", "", "+1"] {
            assert!(quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["10 m", "Mi", "ten", "1.2.3", "5mb", "1-2"] {
            assert!(quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_resource_flags_are_left_out() {
        let args = SidecarArgs {
            sidecar_image: "img".into(),
            sidecar_image_pull_policy: "Always".into(),
            sidecar_cpu_request: "".into(),
            sidecar_memory_request: "".into(),
            sidecar_cpu_limit: "500m".into(),
            sidecar_memory_limit: "".into(),
        };
        let d = args.defaults(SidecarMode::Legacy);
        assert!(d.resources.requests.is_none());
        assert_eq!(
            d.resources.limits,
            Some(BTreeMap::from([("cpu".into(), Quantity("500m".into()))]))
        );
        assert_eq!(d.mode, SidecarMode::Legacy);
        assert_eq!(d.image_pull_policy, "Always");
    }
}
