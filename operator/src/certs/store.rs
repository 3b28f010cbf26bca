//! The webhook TLS Secret in the operator's namespace: read, and written with optimistic
//! concurrency (create if absent, else replace at the resourceVersion read), so when replicas
//! race the first writer wins and the others read what it wrote.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::material::Material;

/// The Secret as read: its material (if complete) and what a write needs.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// The object, `None` when it does not exist.
    pub secret: Option<Secret>,
    pub material: Option<Material>,
}

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Ok,
    /// Another replica wrote first: read again.
    Conflict,
}

#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    name: String,
}

impl SecretStore {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn read(&self) -> Result<Stored, kube::Error> {
        let secret = self.api.get_opt(&self.name).await?;
        let material = secret
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(Material::from_data);
        Ok(Stored { secret, material })
    }

    /// Writes `material` over what `read` returned (keeping its labels and annotations, e.g.
    /// the chart's, which creates the Secret empty so that it owns it).
    pub async fn write(&self, read: &Stored, material: &Material) -> Result<Written, kube::Error> {
        let result = match &read.secret {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".to_owned()),
                    data: Some(material.to_data()),
                    ..Secret::default()
                };
                self.api.create(&PostParams::default(), &secret).await
            }
            Some(existing) => {
                let mut secret = existing.clone();
                secret.metadata.managed_fields = None;
                secret.data = Some(material.to_data());
                secret.string_data = None;
                self.api
                    .replace(&self.name, &PostParams::default(), &secret)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(Written::Ok),
            // 409: changed or created since we read it.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Written::Conflict),
            Err(e) => Err(e),
        }
    }
}
