//! Which binding a pod gets, and whether its integration may be used: pure, so the webhook (on a
//! cached or a live list) and the CLI (on files) decide the same way.
//!
//! - The annotation `mcp.civic.com/binding: <integration>/<binding>` picks one of the bindings
//!   whose selector matches the pod (to settle an ambiguity). It cannot pick one that does not:
//!   bindings are a boundary, and whoever labels pods must not reach another binding's profile.
//! - Otherwise each CivicIntegration of the pod's namespace, in name order, offers its first
//!   binding whose selector matches. None: no match. More than one integration: ambiguous.
//! - The chosen integration must pass validation; `Ready=False` for its current generation
//!   denies; `Ready` not yet known (new, stale, or Civic Auth unreachable) injects with a
//!   warning, since the sidecar retries on its own.

use std::collections::BTreeMap;

use kube::core::SelectorExt;

use crate::annotations::{BINDING_ANNOTATION, parse_binding_ref};
use crate::conditions;
use crate::crd::{CivicIntegration, ProfileBinding};
use crate::policy::Policy;
use crate::validation;

/// The binding that selects a pod.
#[derive(Clone, Copy, Debug)]
pub struct Selected<'a> {
    pub integration: &'a CivicIntegration,
    pub binding: &'a ProfileBinding,
}

/// Why no binding can be chosen. Messages say what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("annotation {BINDING_ANNOTATION} must be <integration>/<binding>, not {0:?}")]
    MalformedAnnotation(String),
    #[error(
        "annotation {BINDING_ANNOTATION} names CivicIntegration {integration:?}, which does not \
         exist in namespace {namespace:?}; create it or fix the annotation"
    )]
    IntegrationNotFound {
        integration: String,
        namespace: String,
    },
    #[error(
        "CivicIntegration {integration:?} has no binding {binding:?} (it has: {available}); fix \
         the annotation {BINDING_ANNOTATION}"
    )]
    BindingNotFound {
        integration: String,
        binding: String,
        available: String,
    },
    #[error(
        "bindings of several CivicIntegrations select this pod ({candidates}); choose one with \
         the annotation {BINDING_ANNOTATION}: <integration>/<binding>, or narrow their \
         podSelectors"
    )]
    Ambiguous { candidates: String },
    #[error(
        "binding {integration}/{binding} does not select this pod (its podSelector does not \
         match the pod's labels); the annotation {BINDING_ANNOTATION} only chooses among \
         bindings that select the pod"
    )]
    NotSelected {
        integration: String,
        binding: String,
    },
}

impl SelectError {
    /// Low-cardinality label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            SelectError::MalformedAnnotation(_) => "malformed_annotation",
            SelectError::IntegrationNotFound { .. } => "integration_not_found",
            SelectError::BindingNotFound { .. } => "binding_not_found",
            SelectError::Ambiguous { .. } => "ambiguous",
            SelectError::NotSelected { .. } => "binding_does_not_select_pod",
        }
    }
}

/// Chooses the binding for a pod with these labels and annotations in `namespace`, among
/// `integrations` (any namespace; others are ignored). `Ok(None)`: nothing selects the pod.
pub fn select<'a>(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    namespace: Option<&str>,
    integrations: impl IntoIterator<Item = &'a CivicIntegration>,
) -> Result<Option<Selected<'a>>, SelectError> {
    let mut candidates: Vec<&'a CivicIntegration> = integrations
        .into_iter()
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .filter(|i| match (namespace, i.metadata.namespace.as_deref()) {
            (Some(want), Some(have)) => want == have,
            // A manifest without a namespace (CLI) may land in any namespace.
            _ => true,
        })
        .collect();
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    if let Some(value) = annotations.get(BINDING_ANNOTATION) {
        let (want_integration, want_binding) = parse_binding_ref(value)
            .ok_or_else(|| SelectError::MalformedAnnotation(value.clone()))?;
        let integration = candidates
            .iter()
            .find(|i| i.metadata.name.as_deref() == Some(want_integration))
            .ok_or_else(|| SelectError::IntegrationNotFound {
                integration: want_integration.to_owned(),
                namespace: namespace.unwrap_or_default().to_owned(),
            })?;
        let binding = integration
            .spec
            .bindings
            .iter()
            .find(|b| b.name == want_binding)
            .ok_or_else(|| SelectError::BindingNotFound {
                integration: want_integration.to_owned(),
                binding: want_binding.to_owned(),
                available: binding_names(integration),
            })?;
        if !selects(binding, labels) {
            return Err(SelectError::NotSelected {
                integration: want_integration.to_owned(),
                binding: want_binding.to_owned(),
            });
        }
        return Ok(Some(Selected {
            integration,
            binding,
        }));
    }

    let mut matches = candidates.into_iter().filter_map(|integration| {
        first_match(integration, labels).map(|binding| Selected {
            integration,
            binding,
        })
    });
    let Some(first) = matches.next() else {
        return Ok(None);
    };
    let rest: Vec<Selected<'a>> = matches.collect();
    if rest.is_empty() {
        return Ok(Some(first));
    }
    let candidates = std::iter::once(first)
        .chain(rest)
        .map(|s| {
            format!(
                "{}/{}",
                s.integration.metadata.name.as_deref().unwrap_or_default(),
                s.binding.name
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(SelectError::Ambiguous { candidates })
}

/// The integration's first binding whose (valid) selector matches; invalid selectors match
/// nothing.
fn first_match<'a>(
    integration: &'a CivicIntegration,
    labels: &BTreeMap<String, String>,
) -> Option<&'a ProfileBinding> {
    integration
        .spec
        .bindings
        .iter()
        .find(|b| selects(b, labels))
}

/// Whether the binding's (valid) selector matches these labels; an invalid one matches nothing.
fn selects(binding: &ProfileBinding, labels: &BTreeMap<String, String>) -> bool {
    validation::selector(&binding.pod_selector).is_some_and(|selector| selector.matches(labels))
}

fn binding_names(integration: &CivicIntegration) -> String {
    let names: Vec<&str> = integration
        .spec
        .bindings
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    if names.is_empty() {
        "no bindings".to_owned()
    } else {
        names.join(", ")
    }
}

/// Whether a chosen integration may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Usable {
    /// `Ready=True`.
    Ready,
    /// Valid, but readiness is not established; inject and tell the user why.
    Unverified { warning: String },
}

/// Why a chosen integration must not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnusableError {
    #[error("CivicIntegration {integration:?} is invalid: {problems}; fix its spec")]
    Invalid {
        integration: String,
        problems: String,
    },
    #[error(
        "CivicIntegration {integration:?} is not ready ({reason}: {message}); fix it (see \
         kubectl describe civic {integration}) and create the pod again"
    )]
    NotReady {
        integration: String,
        reason: String,
        message: String,
    },
}

impl UnusableError {
    pub fn category(&self) -> &'static str {
        match self {
            UnusableError::Invalid { .. } => "integration_invalid",
            UnusableError::NotReady { .. } => "integration_not_ready",
        }
    }
}

/// Validation under `policy` always; with `check_status`, the `Ready` condition too (the CLI
/// has no status). The policy is checked here, not only through the status, so that a pod is
/// denied even before the controller has seen an integration that breaks it.
pub fn usable(
    integration: &CivicIntegration,
    check_status: bool,
    policy: &Policy,
) -> Result<Usable, UnusableError> {
    let name = integration.metadata.name.clone().unwrap_or_default();
    if let Err(invalid) = validation::validate(&integration.spec, policy) {
        return Err(UnusableError::Invalid {
            integration: name,
            problems: invalid.to_string(),
        });
    }
    if !check_status {
        return Ok(Usable::Ready);
    }
    let Some(ready) = integration.condition(conditions::READY) else {
        return Ok(Usable::Unverified {
            warning: format!(
                "CivicIntegration {name:?} has no status yet; the sidecar was injected anyway"
            ),
        });
    };
    let current = ready.observed_generation.is_none()
        || ready.observed_generation == integration.metadata.generation;
    match ready.status.as_str() {
        "True" => Ok(Usable::Ready),
        "False" if current => Err(UnusableError::NotReady {
            integration: name,
            reason: ready.reason.clone(),
            message: ready.message.clone(),
        }),
        _ => Ok(Usable::Unverified {
            warning: format!(
                "CivicIntegration {name:?} is not verified yet ({}); the sidecar was injected anyway",
                ready.reason
            ),
        }),
    }
}
