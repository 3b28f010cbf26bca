//! The Helm chart against the real kube-apiserver tier (docs/architecture.md §6 tiers 4, 5): `helm
//! install` of `charts/civic-mcp` (CRD included), the real `civic-operator run` configured by the
//! environment of the chart's own Deployment and authenticated as the chart's ServiceAccount
//! (so only the chart's RBAC applies), reconciling a CivicIntegration to `Ready=True` against a
//! fake Civic Auth; then `helm upgrade` (which must upgrade the CRD and leave the operator's
//! runtime writes alone, among them the webhook's `caBundle` and TLS Secret) and `helm uninstall`
//! (which must leave nothing but the kept CRD).
//! Pods never run here (no kubelet): the operator is a local process. Fails, never skips, when
//! helm or the kube binaries are missing (`scripts/install-helm.sh`, `scripts/kube/build.sh`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use civic_operator::crd::CivicIntegration;
use civic_testkit::apiserver::{ADMIN_USER, KubeApiServer};
use civic_testkit::auth::FakeCivicAuth;
use civic_testkit::secrets::{self, CLIENT_ID, CLIENT_SECRET, PROFILE_ID};
use common::{Process, eventually_slowly as eventually, lease_holder, repo_root};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const RELEASE: &str = "civic-mcp";
const NS: &str = "civic-system";
/// Fixed by `charts/civic-mcp/templates/rbac.yaml`.
const SA_NAME: &str = "civic-mcp-operator";
const TEAM: &str = "team-chart";
const CRD_NAME: &str = "civicintegrations.mcp.civic.com";
const CRD_FILE: &str = "files/civicintegrations.mcp.civic.com.yaml";
/// A printer-column description the "previous release" of the chart carries, so the upgrade
/// can be seen to change the CRD.
const REAL_DESCRIPTION: &str = "Whether the integration is usable";
const OLD_DESCRIPTION: &str = "Previous chart release";
const EVENTUALLY: Duration = Duration::from_secs(60);
const OPERATOR_NAME: &str = "chart-operator-0";
const WEBHOOK_NAME: &str = "chart-webhook-0";
/// Fixed by the chart, like the Secret below.
const WEBHOOK_CONFIG: &str = "civic-mcp-civic-system";
const WEBHOOK_TLS_SECRET: &str = "civic-mcp-webhook-tls";
/// What the apiserver calls: the chart's webhook Service in the release namespace.
const WEBHOOK_DNS_NAME: &str = "civic-mcp-webhook.civic-system.svc";

/// helm with its own config/cache/data dirs and the admin kubeconfig.
struct Helm {
    bin: PathBuf,
    home: civic_testkit::fs::TempDir,
    kubeconfig: PathBuf,
}

impl Helm {
    fn new(kubeconfig: PathBuf) -> anyhow::Result<Self> {
        let bin = common::helm_bin()?;
        Ok(Self {
            bin,
            home: civic_testkit::fs::TempDir::new("helm-home"),
            kubeconfig,
        })
    }

    /// Runs helm to completion off the async runtime; fails with its output on a non-zero exit.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_DATA_HOME", self.home.path().join("data"));
        let shown = format!("helm {}", args.join(" "));
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .with_context(|| format!("running {shown}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "{shown} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }
}

/// A copy of the chart whose CRD differs from the real one: the "previous release".
fn previous_chart(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = repo_root().join("charts/civic-mcp");
    let dst = dir.join("civic-mcp-previous");
    copy_dir(&src, &dst)?;
    let crd = dst.join(CRD_FILE);
    let text = std::fs::read_to_string(&crd)?;
    ensure!(
        text.contains(REAL_DESCRIPTION),
        "the CRD no longer has the description this test changes"
    );
    std::fs::write(&crd, text.replace(REAL_DESCRIPTION, OLD_DESCRIPTION))?;
    Ok(dst)
}

fn copy_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// The plain `value` env vars of the operator container of the `component` Deployment
/// (`controller` or `webhook`) in a rendered manifest.
fn deployment_env(manifest: &str, component: &str) -> anyhow::Result<BTreeMap<String, String>> {
    for doc in serde_yaml_ng::Deserializer::from_str(manifest) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if v["kind"] != "Deployment"
            || v["metadata"]["labels"]["app.kubernetes.io/component"] != component
        {
            continue;
        }
        let containers = v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .context("Deployment without containers")?;
        let operator = containers
            .iter()
            .find(|c| c["name"] == "operator")
            .context("no operator container")?;
        let env = operator["env"].as_array().context("no env")?;
        return Ok(env
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect());
    }
    bail!("no {component} Deployment in the release manifest")
}

/// `civic-operator run` as the chart configures it; output captured and scanned for secrets.
/// (`common` is a module of this test crate, so this binary can add its own methods.)
type Operator = Process;

impl Operator {
    /// One pod of a chart Deployment, as the process its env describes; `name` is its pod name.
    fn start(
        kubeconfig: &Path,
        name: &str,
        chart_env: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_civic-operator"));
        cmd.env_clear()
            .envs(chart_env)
            // What the pod would get from the downward API and its kubelet.
            .env("POD_NAMESPACE", NS)
            .env("POD_NAME", name)
            .env("KUBECONFIG", kubeconfig)
            // Loopback and free ports only on a shared test machine.
            .env("CIVIC_OPERATOR_ADMIN_ADDR", "127.0.0.1:0")
            .env("CIVIC_OPERATOR_WEBHOOK_ADDR", "127.0.0.1:0")
            .arg("run");
        Process::spawn(name, cmd, &format!("{name}-chart.log"))
    }

    /// The webhook's address, from its "webhook listening" log line.
    async fn webhook_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        self.logged_addr("webhook listening", EVENTUALLY).await
    }
}

async fn ready_condition(admin: &Client) -> anyhow::Result<Option<(String, String)>> {
    let api: Api<CivicIntegration> = Api::namespaced(admin.clone(), TEAM);
    let ci = api.get("chart").await?;
    let status = |t: &str| ci.condition(t).map(|c| c.status.clone());
    Ok(match (status("Ready"), status("CredentialsValid")) {
        (Some(r), Some(c)) => Some((r, c)),
        _ => None,
    })
}

async fn wait_ready(admin: &Client, operator: &Operator) -> anyhow::Result<()> {
    let result = eventually("CivicIntegration Ready=True", EVENTUALLY, || async {
        ensure!(operator.running(), "the operator exited");
        Ok(ready_condition(admin)
            .await?
            .filter(|(r, c)| r == "True" && c == "True"))
    })
    .await;
    result.with_context(|| format!("operator output:\n{}", operator.output()))?;
    Ok(())
}

/// The chart's webhook configuration's `caBundle` once the operator has filled it in with the
/// Secret's `ca.crt`; `None` until then.
async fn filled_ca_bundle(admin: &Client) -> anyhow::Result<Option<String>> {
    let config = Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .get(WEBHOOK_CONFIG)
        .await?;
    let bundle = config
        .webhooks
        .iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()))
        .collect::<Option<Vec<_>>>();
    let secret = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(WEBHOOK_TLS_SECRET)
        .await?;
    let stored = secret
        .data
        .and_then(|d| d.get("ca.crt").map(|b| b.0.clone()));
    Ok(match (bundle, stored) {
        (Some(all), Some(ca)) if !all.is_empty() && all.iter().all(|b| *b == ca) => {
            Some(String::from_utf8(ca)?)
        }
        _ => None,
    })
}

/// Whether a TLS client that trusts only `ca_pem` and asks for the webhook Service's DNS name
/// (as the apiserver does) accepts the certificate served at `addr`.
async fn webhook_trusted_by(addr: std::net::SocketAddr, ca_pem: &str) -> anyhow::Result<bool> {
    let name = rustls_pki_types::ServerName::try_from(WEBHOOK_DNS_NAME)?;
    common::webhook_trusted_by(addr, ca_pem, name).await
}

async fn crd_description(admin: &Client) -> anyhow::Result<Option<String>> {
    let crd = Api::<CustomResourceDefinition>::all(admin.clone())
        .get(CRD_NAME)
        .await?;
    Ok(crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .and_then(|cols| cols.iter().find(|c| c.name == "Ready"))
        .and_then(|c| c.description.clone()))
}

/// Every object left in the release namespace (Events aside) and every cluster-scoped
/// object of the chart except the CRD.
async fn leftovers(admin: &Client) -> anyhow::Result<Vec<String>> {
    let discovery = Discovery::new(admin.clone()).run().await?;
    let mut left = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            // Events age out by themselves; the namespace itself is the user's.
            if !caps.supports_operation(verbs::LIST)
                || ar.plural == "events"
                || ar.plural == "namespaces"
            {
                continue;
            }
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => Api::namespaced_with(admin.clone(), NS, &ar),
                Scope::Cluster => Api::all_with(admin.clone(), &ar),
            };
            let Ok(list) = api.list(&ListParams::default()).await else {
                continue;
            };
            for obj in list {
                let name = obj.name_any();
                let ours = match caps.scope {
                    Scope::Namespaced => true,
                    Scope::Cluster => {
                        // The kept CRD and the APIService the apiserver derives from it.
                        name != CRD_NAME
                            && name != "v1alpha1.mcp.civic.com"
                            && (name.contains("civic")
                                || obj
                                    .labels()
                                    .get("app.kubernetes.io/name")
                                    .map(String::as_str)
                                    == Some("civic-mcp"))
                    }
                };
                if ours {
                    left.push(format!("{}/{name}", ar.kind));
                }
            }
        }
    }
    Ok(left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_operator_under_chart_rbac_upgrade_and_uninstall() -> anyhow::Result<()> {
    let sa_user = KubeApiServer::service_account_user(NS, SA_NAME);
    let webhook_user = KubeApiServer::service_account_user(NS, common::WEBHOOK_SA);
    let cluster = KubeApiServer::builder()
        .service_account(NS, SA_NAME)
        .service_account(NS, common::WEBHOOK_SA)
        .start()
        .await
        .context("starting etcd + kube-apiserver (build them with scripts/kube/build.sh)")?;
    let admin = cluster.admin_client().await?;
    let helm = Helm::new(cluster.write_kubeconfig(ADMIN_USER)?)?;
    let work = civic_testkit::fs::TempDir::new("chart-test");
    let chart = repo_root().join("charts/civic-mcp");
    let chart = chart.to_str().context("non-UTF-8 path")?;
    let previous = previous_chart(work.path())?;
    let previous = previous.to_str().context("non-UTF-8 path")?;

    // 1. Install the "previous release": CRD, RBAC, Deployment, webhook, Lease, Secret.
    helm.run(&[
        "install",
        RELEASE,
        previous,
        "--namespace",
        NS,
        "--create-namespace",
        // The fake Civic Auth listens on loopback; the chart's policy allows Civic's host only.
        "--set",
        "policy.allowedTokenHosts={localhost,127.0.0.1}",
    ])
    .await?;
    let manifest = helm
        .run(&["get", "manifest", RELEASE, "--namespace", NS])
        .await?;
    let controller_env = deployment_env(&manifest, "controller")?;
    let webhook_env = deployment_env(&manifest, "webhook")?;
    ensure!(
        controller_env.contains_key("CIVIC_OPERATOR_LEASE_NAME"),
        "the chart sets no lease name"
    );
    ensure!(
        webhook_env.contains_key("CIVIC_OPERATOR_SIDECAR_IMAGE"),
        "the chart sets no sidecar image"
    );
    let crd = Api::<CustomResourceDefinition>::all(admin.clone())
        .get(CRD_NAME)
        .await?;
    ensure!(
        crd.annotations()
            .get("helm.sh/resource-policy")
            .map(String::as_str)
            == Some("keep"),
        "the CRD is not kept on uninstall"
    );
    ensure!(crd_description(&admin).await?.as_deref() == Some(OLD_DESCRIPTION));

    // 2. The operator as the chart's ServiceAccount reconciles an integration to Ready.
    let auth = FakeCivicAuth::start().await?;
    secrets::register_secret(CLIENT_SECRET);
    // Each Deployment's process as its own ServiceAccount, bound only by the chart's RBAC.
    let operator = Operator::start(
        &cluster.write_kubeconfig(&sa_user)?,
        OPERATOR_NAME,
        &controller_env,
    )?;
    let webhook_replica = Operator::start(
        &cluster.write_kubeconfig(&webhook_user)?,
        WEBHOOK_NAME,
        &webhook_env,
    )?;
    let team: Namespace = serde_json::from_value(json!({"metadata": {"name": TEAM}}))?;
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &team)
        .await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "civic-credentials"},
        "stringData": {"client-secret": CLIENT_SECRET},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), TEAM)
        .create(&PostParams::default(), &secret)
        .await?;
    let integration: CivicIntegration = serde_json::from_value(json!({
        "apiVersion": "mcp.civic.com/v1alpha1",
        "kind": "CivicIntegration",
        "metadata": {"name": "chart"},
        "spec": {
            "clientId": CLIENT_ID,
            "clientSecretRef": {"name": "civic-credentials", "key": "client-secret"},
            "tokenUrl": auth.token_url(),
            "bindings": [{
                "name": "agents",
                "podSelector": {"matchLabels": {"app": "agent"}},
                "profileId": PROFILE_ID,
                "subject": {"serviceAccountToken": {"audience": "civic"}},
            }],
        },
    }))?;
    let integrations: Api<CivicIntegration> = Api::namespaced(admin.clone(), TEAM);
    // The CRD may still be on its way to Established right after the install.
    eventually("CivicIntegration created", EVENTUALLY, || async {
        Ok(integrations
            .create(&PostParams::default(), &integration)
            .await
            .ok())
    })
    .await?;
    wait_ready(&admin, &operator).await?;
    ensure!(auth.calls() >= 1, "the credentials were never probed");
    let holder = eventually(
        "the operator holds the chart's Lease",
        EVENTUALLY,
        || async { Ok(lease_holder(&admin).await?.filter(|h| h == OPERATOR_NAME)) },
    )
    .await?;
    // Self-managed webhook TLS under the chart's RBAC: the chart's empty Secret is filled, the
    // chart's webhook configuration gets its caBundle, and the webhook serves a certificate
    // for the chart's Service name signed by that CA.
    let ca_bundle = eventually("the chart's caBundle filled in", EVENTUALLY, || async {
        filled_ca_bundle(&admin).await
    })
    .await
    .with_context(|| format!("webhook output:\n{}", webhook_replica.output()))?;
    let webhook = webhook_replica.webhook_addr().await?;
    ensure!(
        webhook_trusted_by(webhook, &ca_bundle).await?,
        "the webhook's certificate is not valid for {WEBHOOK_DNS_NAME} under the caBundle"
    );

    // 3. Upgrade to the real chart: the CRD is upgraded, the operator's Lease survives.
    helm.run(&[
        "upgrade",
        RELEASE,
        chart,
        "--namespace",
        NS,
        "--reuse-values",
        "--set",
        "operator.logLevel=debug",
    ])
    .await?;
    ensure!(
        crd_description(&admin).await?.as_deref() == Some(REAL_DESCRIPTION),
        "helm upgrade did not upgrade the CRD"
    );
    let upgraded_env = deployment_env(
        &helm
            .run(&["get", "manifest", RELEASE, "--namespace", NS])
            .await?,
        "controller",
    )?;
    ensure!(upgraded_env.get("CIVIC_OPERATOR_LOG").map(String::as_str) == Some("debug"));
    ensure!(
        lease_holder(&admin).await?.as_deref() == Some(holder.as_str()),
        "helm upgrade reset the operator's Lease"
    );
    ensure!(integrations.get("chart").await.is_ok());
    ensure!(
        filled_ca_bundle(&admin).await?.as_deref() == Some(ca_bundle.as_str()),
        "helm upgrade dropped the caBundle or the TLS Secret the operator wrote"
    );
    wait_ready(&admin, &operator).await?;

    // 4. Uninstall while the operator runs (as in a cluster, where its pods stop afterwards).
    helm.run(&["uninstall", RELEASE, "--namespace", NS]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    operator.stop();
    webhook_replica.stop();
    eventually("nothing left after helm uninstall", EVENTUALLY, || async {
        let left = leftovers(&admin).await?;
        ensure!(left.is_empty(), "still there: {left:?}");
        Ok(Some(()))
    })
    .await?;
    ensure!(
        Api::<CustomResourceDefinition>::all(admin.clone())
            .get_opt(CRD_NAME)
            .await?
            .is_some(),
        "the CRD was deleted on uninstall (it is kept on purpose)"
    );
    ensure!(
        integrations.get("chart").await.is_ok(),
        "integrations must survive an uninstall with the kept CRD"
    );
    Ok(())
}
