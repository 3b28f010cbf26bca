//! Keeps `clientConfig.caBundle` of every webhook in the MutatingWebhookConfiguration equal to
//! the Secret's `ca.crt`, by server-side apply under its own field manager. The configuration
//! itself belongs to the chart; a missing one is left alone.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::issue;

/// Field manager of the `caBundle` writes.
pub const FIELD_MANAGER: &str = "civic-operator-webhook-ca";

#[derive(Clone)]
pub struct WebhookConfig {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
}

/// The CA bundles the configuration's webhooks hold now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// `None`: there is no such configuration.
    pub bundles: Option<Vec<Vec<String>>>,
}

impl Trust {
    /// Whether every webhook trusts `ca_pem` (true without a configuration: nothing calls us).
    pub fn trusts(&self, ca_pem: &str) -> bool {
        self.bundles.as_ref().is_none_or(|all| {
            all.iter()
                .all(|b| b.iter().any(|c| c.trim() == ca_pem.trim()))
        })
    }
}

impl WebhookConfig {
    pub fn new(client: kube::Client, name: &str) -> Self {
        Self {
            api: Api::all(client),
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn trust(&self) -> Result<Trust, kube::Error> {
        let Some(config) = self.api.get_opt(&self.name).await? else {
            return Ok(Trust::default());
        };
        let bundles = config
            .webhooks
            .iter()
            .flatten()
            .map(|w| {
                let raw = w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice());
                issue::split(&String::from_utf8_lossy(raw.unwrap_or_default()))
            })
            .collect();
        Ok(Trust {
            bundles: Some(bundles),
        })
    }

    /// Applies `bundle_pem` to every webhook whose `caBundle` differs. Returns whether it
    /// wrote (no configuration, or nothing to change: no write).
    pub async fn ensure(&self, bundle_pem: &str) -> Result<bool, kube::Error> {
        let Some(config) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let webhooks = config.webhooks.unwrap_or_default();
        let want = ByteString(bundle_pem.as_bytes().to_vec());
        if webhooks
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref() == Some(&want))
        {
            return Ok(false);
        }
        let entries: Vec<_> = webhooks
            .iter()
            .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": want}}))
            .collect();
        let patch = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": entries,
        });
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_needs_every_webhook_to_hold_the_ca() {
        let none = Trust::default();
        assert!(none.trusts("x"));
        let t = Trust {
            bundles: Some(vec![vec!["a\n".into(), "b\n".into()], vec!["b\n".into()]]),
        };
        assert!(t.trusts("b"));
        assert!(!t.trusts("a"));
        let empty = Trust {
            bundles: Some(vec![vec![]]),
        };
        assert!(!empty.trusts("a"));
    }
}
