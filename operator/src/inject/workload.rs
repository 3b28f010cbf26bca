//! `civic-operator inject`: Pods and workload templates in multi-document YAML, injected with
//! the same [`inject`](super::inject) the webhook uses. The patch is applied to each document as
//! read, so fields the operator's Rust types do not know survive unchanged.

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;

use super::select::{self, SelectError, UnusableError};
use super::{InjectDefaults, InjectError, inject, is_injected, patch};
use crate::crd::CivicIntegration;

/// Where a kind keeps its pod template (a JSON pointer), `""` for a Pod itself.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job"
        | "PodTemplate" => Some(if kind == "PodTemplate" {
            "/template"
        } else {
            "/spec/template"
        }),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Why the input could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("document {index}: not valid YAML: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("document {index}: {kind} is not a CivicIntegration: {source}")]
    Integration {
        index: usize,
        kind: String,
        source: serde_json::Error,
    },
    #[error("cannot write YAML: {0}")]
    Write(#[from] serde_yaml_ng::Error),
}

impl ReadError {
    pub fn category(&self) -> &'static str {
        match self {
            ReadError::Yaml { .. } => "invalid_yaml",
            ReadError::Integration { .. } => "invalid_integration",
            ReadError::Write(_) => "write",
        }
    }
}

/// Every document of a multi-document YAML stream, as JSON values (empty documents dropped).
pub fn read_documents(input: &str) -> Result<Vec<Value>, ReadError> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| ReadError::Yaml { index, source })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The CivicIntegrations in a YAML stream (other kinds are ignored; `List`s are opened).
pub fn read_integrations(input: &str) -> Result<Vec<CivicIntegration>, ReadError> {
    let mut out = Vec::new();
    for (index, doc) in read_documents(input)?.into_iter().enumerate() {
        for item in flatten_lists(doc) {
            if item.get("kind").and_then(Value::as_str) != Some("CivicIntegration") {
                continue;
            }
            let integration =
                serde_json::from_value(item).map_err(|source| ReadError::Integration {
                    index,
                    kind: "CivicIntegration".into(),
                    source,
                })?;
            out.push(integration);
        }
    }
    Ok(out)
}

fn flatten_lists(doc: Value) -> Vec<Value> {
    match doc {
        Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
            match map.remove("items") {
                Some(Value::Array(items)) => items.into_iter().flat_map(flatten_lists).collect(),
                _ => Vec::new(),
            }
        }
        other => vec![other],
    }
}

/// What happened to one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Injected with `<integration>/<binding>`.
    Injected(String),
    /// Already carried the sidecar (only missing `CIVIC_MCP_URL`s were added).
    AlreadyInjected,
    /// Not a kind with a pod template.
    NotAWorkload,
    /// No binding selects it: unchanged.
    NoMatch,
    /// Cannot be injected: unchanged, and the run fails.
    Failed(String),
}

/// One document's outcome, for the report on stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `Kind/name` of the document.
    pub object: String,
    pub outcome: Outcome,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Injected(b) => write!(f, "{}: injected with binding {b}", self.object),
            Outcome::AlreadyInjected => write!(f, "{}: already injected", self.object),
            Outcome::NotAWorkload => write!(f, "{}: no pod template, unchanged", self.object),
            Outcome::NoMatch => write!(
                f,
                "{}: no CivicIntegration binding selects it, unchanged",
                self.object
            ),
            Outcome::Failed(why) => write!(f, "{}: not injected: {why}", self.object),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum DocError {
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Unusable(#[from] UnusableError),
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("the pod template does not parse: {0}")]
    Template(serde_json::Error),
    #[error("applying the patch failed: {0}")]
    Patch(#[from] json_patch::PatchError),
}

/// Injects every Pod and pod template among `docs` in place; `Lists` are handled item by item.
pub fn inject_documents(
    docs: &mut [Value],
    integrations: &[CivicIntegration],
    defaults: &InjectDefaults,
) -> Vec<Report> {
    let mut reports = Vec::new();
    for doc in docs {
        inject_value(doc, integrations, defaults, &mut reports);
    }
    reports
}

fn inject_value(
    doc: &mut Value,
    integrations: &[CivicIntegration],
    defaults: &InjectDefaults,
    reports: &mut Vec<Report>,
) {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" {
        if let Some(Value::Array(items)) = doc.get_mut("items") {
            for item in items {
                inject_value(item, integrations, defaults, reports);
            }
        }
        return;
    }
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let object = format!("{kind}/{name}");
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let outcome = match template_pointer(&kind).and_then(|p| doc.pointer_mut(p)) {
        None => Outcome::NotAWorkload,
        Some(template) => match inject_template(template, namespace, integrations, defaults) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(e.to_string()),
        },
    };
    reports.push(Report { object, outcome });
}

/// `template` is a Pod or a PodTemplateSpec: both have `metadata` and `spec` at the top.
fn inject_template(
    template: &mut Value,
    namespace: Option<String>,
    integrations: &[CivicIntegration],
    defaults: &InjectDefaults,
) -> Result<Outcome, DocError> {
    let mut pod = Pod::deserialize(&*template).map_err(DocError::Template)?;
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = namespace;
    }
    let already = is_injected(&pod);
    let Some(selected) = select_for(&pod, integrations)? else {
        if already {
            return Err(InjectError::MarkersWithoutBinding.into());
        }
        return Ok(Outcome::NoMatch);
    };
    select::usable(selected.integration, false, &defaults.policy)?;
    // As on a webhook reinvocation, an injected template is verified, and only missing
    // CIVIC_MCP_URLs are added.
    let injected = inject(&pod, selected.integration, selected.binding, defaults)?;
    apply(template, &pod, &injected)?;
    if already {
        return Ok(Outcome::AlreadyInjected);
    }
    Ok(Outcome::Injected(format!(
        "{}/{}",
        selected
            .integration
            .metadata
            .name
            .as_deref()
            .unwrap_or_default(),
        selected.binding.name
    )))
}

fn select_for<'a>(
    pod: &Pod,
    integrations: &'a [CivicIntegration],
) -> Result<Option<select::Selected<'a>>, SelectError> {
    let none = Default::default();
    select::select(
        pod.metadata.labels.as_ref().unwrap_or(&none),
        pod.metadata.annotations.as_ref().unwrap_or(&none),
        pod.metadata.namespace.as_deref(),
        integrations,
    )
}

fn apply(template: &mut Value, original: &Pod, injected: &Pod) -> Result<(), DocError> {
    let ops = patch(original, injected).map_err(DocError::Template)?;
    json_patch::patch(template, &ops)?;
    Ok(())
}

/// The documents as one multi-document YAML stream.
pub fn write_documents(docs: &[Value]) -> Result<String, ReadError> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(doc)?);
    }
    Ok(out)
}
