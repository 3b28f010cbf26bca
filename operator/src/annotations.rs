//! Pod labels and annotations shared by the webhook (which writes them) and the controller
//! (which counts pods by them). One place, so the two can never disagree.

/// Pods opt in to injection with this label set to [`INJECT_ENABLED`] (the webhook's
/// `objectSelector`, so the webhook never sees other pods).
pub const INJECT_LABEL: &str = "mcp.civic.com/inject";
/// The value of [`INJECT_LABEL`] that opts a pod in.
pub const INJECT_ENABLED: &str = "enabled";
/// Optional pod annotation naming the binding explicitly, as `<integration>/<binding>`.
pub const BINDING_ANNOTATION: &str = "mcp.civic.com/binding";
/// Written by the webhook on every pod it injected, as `<integration>/<binding>` (see
/// [`binding_ref`]). The controller counts a binding's `injectedPods` by it.
pub const INJECTED_ANNOTATION: &str = "mcp.civic.com/injected";
/// Written by the webhook next to [`INJECTED_ANNOTATION`]: the `metadata.generation` of the
/// CivicIntegration the sidecar was rendered from.
pub const INJECTED_GENERATION_ANNOTATION: &str = "mcp.civic.com/injected-generation";

/// Whether a pod's labels opt it in to injection.
pub fn opted_in(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get(INJECT_LABEL).map(String::as_str) == Some(INJECT_ENABLED)
}

/// The label selector of the opted-in pods, as the API takes it.
pub fn opted_in_selector() -> String {
    format!("{INJECT_LABEL}={INJECT_ENABLED}")
}

/// `<integration>/<binding>`, the value of [`BINDING_ANNOTATION`] and [`INJECTED_ANNOTATION`].
pub fn binding_ref(integration: &str, binding: &str) -> String {
    format!("{integration}/{binding}")
}

/// Splits an `<integration>/<binding>` value; `None` unless both parts are non-empty.
pub fn parse_binding_ref(value: &str) -> Option<(&str, &str)> {
    let (integration, binding) = value.trim().split_once('/')?;
    (!integration.is_empty() && !binding.is_empty() && !binding.contains('/'))
        .then_some((integration, binding))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_ref_round_trips() {
        let v = binding_ref("civic", "support");
        assert_eq!(v, "civic/support");
        assert_eq!(parse_binding_ref(&v), Some(("civic", "support")));
    }

    #[test]
    fn malformed_binding_refs_are_rejected() {
        for bad in ["", "civic", "civic/", "/support", "a/b/c"] {
            assert_eq!(parse_binding_ref(bad), None, "{bad:?}");
        }
    }
}
