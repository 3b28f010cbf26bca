//! The admission webhook against a real kube-apiserver (1.34, docs/architecture.md §6): the real
//! `civic-operator run` process on loopback (two replicas sharing one TLS Secret), a MutatingWebhookConfiguration pointing at it by
//! URL, kube-controller-manager for ServiceAccounts and ReplicaSets, a fake Civic Auth so the
//! controller can mark integrations ready. The operator runs as its ServiceAccount with only the
//! chart's `rbac.yaml` (never as admin), against the chart's fixed object names: the webhook
//! configuration `civic-mcp` and the TLS Secret the chart creates empty.
//!
//! The operator detects native-sidecar support from the server version (1.29+): the sidecar is
//! stored as an init container with `restartPolicy: Always` and a startup probe, exactly as the
//! golden tier (`inject_golden.rs`) renders it.
//! Fails, never skips, when the kube binaries are missing: run `scripts/kube/build.sh`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use civic_operator::crd::CivicIntegration;
use civic_testkit::apiserver::KubeApiServer;
use civic_testkit::auth::FakeCivicAuth;
use civic_testkit::secrets::{self, CLIENT_ID, CLIENT_SECRET};
use common::{
    CERT_SECRET, LOCAL_USER, OPERATOR_NS, Process, SA_NAME, TEAM, WEBHOOK_CONFIG, WEBHOOK_SA,
    apply_all, chart_rbac, eventually_slowly as eventually,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};

const PROFILE: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const EVENTUALLY: Duration = Duration::from_secs(60);
/// Lifetimes short enough to see a serving-certificate renewal and a CA rotation in one test.
const CA_VALIDITY: &str = "36s";
const CERT_VALIDITY: &str = "12s";

/// `civic-operator run`, output captured and scanned for secrets; killed on drop.
/// (`common` is a module of this test crate, so this binary can add its own methods.)
type Operator = Process;

impl Operator {
    fn start(kubeconfig: &Path, name: &str) -> anyhow::Result<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_civic-operator"));
        cmd.env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", OPERATOR_NS)
            .env("POD_NAME", name)
            .env("CIVIC_OPERATOR_LOG", "info,civic_operator=debug")
            .args(["run", "--admin-addr", "127.0.0.1:0"])
            .envs(common::LOOPBACK_POLICY)
            // Not the in-cluster audiences: the apiserver's issuer must be refused because the
            // operator read it from the discovery document.
            .env("CIVIC_OPERATOR_REFUSED_AUDIENCES", "vault")
            .args(common::LOOPBACK_WEBHOOK)
            .args(["--webhook-ca-validity", CA_VALIDITY])
            .args(["--webhook-cert-validity", CERT_VALIDITY])
            .args(["--webhook-cert-check-interval", "1s"])
            .args(["--lease-duration", "4s", "--lease-renew-deadline", "3s"])
            .args(["--lease-retry-period", "500ms", "--resync-interval", "2s"])
            .args(["--probe-min-interval", "200ms"]);
        Process::spawn(name, cmd, &format!("webhook-{name}.log"))
    }

    async fn webhook_addr(&self) -> anyhow::Result<SocketAddr> {
        self.logged_addr("webhook listening", Duration::from_secs(30))
            .await
    }

    /// One sample of the operator's `/metrics` (admin listener), e.g.
    /// `civic_operator_admissions_total{outcome="injected"}`; 0 when absent.
    async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let admin = self
            .find_addr("admin endpoints listening")
            .context("no admin address logged")?;
        let text = common::metrics_text(admin).await?;
        Ok(common::sample(&text, sample).unwrap_or(0.0))
    }
}

/// Whether a TLS client trusting only `ca_pem` accepts the webhook's certificate for 127.0.0.1.
async fn webhook_trusted_by(addr: SocketAddr, ca_pem: &str) -> anyhow::Result<bool> {
    common::webhook_trusted_by(addr, ca_pem, ServerName::IpAddress(addr.ip().into())).await
}

fn integration(name: &str, app: &str, secret: &str, token_url: &str) -> Value {
    json!({
        "apiVersion": "mcp.civic.com/v1alpha1", "kind": "CivicIntegration",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {
            "clientId": CLIENT_ID,
            "clientSecretRef": {"name": secret, "key": "client-secret"},
            "tokenUrl": token_url,
            "bindings": [{
                "name": "support",
                "podSelector": {"matchLabels": {"app": app}},
                "profileId": PROFILE,
                "subject": {"serviceAccountToken": {"audience": "civic", "expirationSeconds": 3600}},
            }],
        },
    })
}

fn pod(name: &str, app: &str, opted_in: bool, annotations: Value) -> Value {
    let mut labels = json!({"app": app});
    if opted_in {
        labels["mcp.civic.com/inject"] = json!("enabled");
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": TEAM, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
    })
}

/// Creates a pod by a raw POST; returns the status, the `Warning` headers and the body.
async fn create_pod(admin: &Client, body: &Value) -> anyhow::Result<(u16, Vec<String>, Value)> {
    let request = http::Request::post(format!("/api/v1/namespaces/{TEAM}/pods"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(body)?))?;
    let response = admin.send(request).await?;
    let status = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    Ok((status, warnings, serde_json::from_slice(&bytes)?))
}

/// Creates a pod, retrying while the namespace's ServiceAccount is not there yet (the
/// ServiceAccount admission plugin refuses pods until the controller manager made it).
async fn create_pod_eventually(
    admin: &Client,
    body: &Value,
) -> anyhow::Result<(u16, Vec<String>, Value)> {
    eventually("pod creation", EVENTUALLY, || async {
        let (status, warnings, out) = create_pod(admin, body).await?;
        let message = out["message"].as_str().unwrap_or_default();
        let no_token_yet = !message.contains("admission webhook")
            && (message.contains("service account") || message.contains("serviceaccount"));
        if status >= 400 && no_token_yet {
            return Ok(None);
        }
        Ok(Some((status, warnings, out)))
    })
    .await
}

fn containers(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().expect("spec");
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| c.name.clone())
        .collect()
}

fn ca_bundle(config: &MutatingWebhookConfiguration) -> Vec<String> {
    let raw = config
        .webhooks
        .as_ref()
        .and_then(|w| w.first())
        .and_then(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        });
    civic_operator::certs::issue::split(&raw.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_injects_warns_denies_and_rotates_its_certificates() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = KubeApiServer::builder()
        .service_account(OPERATOR_NS, SA_NAME)
        .service_account(OPERATOR_NS, WEBHOOK_SA)
        .user(LOCAL_USER, &["system:authenticated"])
        .with_controller_manager()
        .start()
        .await
        .context("starting etcd + kube-apiserver (build them with scripts/kube/build.sh)")?;
    let admin = cluster.admin_client().await?;
    for ns in [OPERATOR_NS, TEAM] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &ns)
            .await?;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    crds.create(&PostParams::default(), &CivicIntegration::crd())
        .await?;
    eventually("CRD established", EVENTUALLY, || async {
        let crd = crds.get("civicintegrations.mcp.civic.com").await?;
        let ok = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        Ok(ok.then_some(()))
    })
    .await?;
    apply_all(&admin, chart_rbac()?).await?;
    // The chart creates the TLS Secret empty (templates/state.yaml) so the release owns it; the
    // operator may only read and update it.
    common::create_empty_cert_secret(&admin).await?;

    // A fake Civic Auth lets the controller tell good credentials from bad.
    let auth = FakeCivicAuth::start().await?;
    secrets::register_secret(CLIENT_SECRET);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "civic-credentials", "namespace": TEAM},
        "stringData": {"client-secret": CLIENT_SECRET},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), TEAM)
        .create(&PostParams::default(), &secret)
        .await?;
    let token_url = auth.token_url();
    apply_all(
        &admin,
        vec![
            integration("civic", "agent", "civic-credentials", &token_url),
            // Its Secret does not exist: Ready=False.
            integration("broken", "broken", "missing-secret", &token_url),
        ],
    )
    .await?;

    // Each replica runs controller and webhook in one process: both parts' roles, nothing more.
    common::bind_local_user(&admin, &chart_rbac()?).await?;
    let kubeconfig = cluster.write_kubeconfig(LOCAL_USER)?;
    // Two replicas from the start: both race to fill the chart's empty Secret.
    let operator = Operator::start(&kubeconfig, "civic-operator-0")?;
    let replica = Operator::start(&kubeconfig, "civic-operator-1")?;
    let addr = operator.webhook_addr().await?;
    let replica_addr = replica.webhook_addr().await?;
    ensure!(
        operator.output().contains("sidecar_mode=Native"),
        "a 1.34 apiserver has native sidecars:\n{}",
        operator.output()
    );

    // The chart's configuration, minus the Service: the apiserver calls the loopback URL.
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let config: MutatingWebhookConfiguration = serde_json::from_value(
        common::chart_webhook_config(&format!("https://{addr}/inject")),
    )?;
    configs.create(&PostParams::default(), &config).await?;

    // caBundle: filled in by the operator.
    let first_bundle = eventually("caBundle filled in", EVENTUALLY, || async {
        let bundle = ca_bundle(&configs.get(WEBHOOK_CONFIG).await?);
        Ok((!bundle.is_empty()).then_some(bundle))
    })
    .await?;
    ensure!(first_bundle.len() == 1, "one CA at first: {first_bundle:?}");
    let first_ca = first_bundle[0].clone();
    // Replicas agree on one CA: one of them created the material, both serve certificates of
    // the CA in caBundle.
    for (a, what) in [(addr, "first"), (replica_addr, "second")] {
        eventually(
            &format!("the {what} replica serves a cert of the caBundle CA"),
            EVENTUALLY,
            || async { Ok(webhook_trusted_by(a, &first_ca).await?.then_some(())) },
        )
        .await?;
    }
    let created = [&operator, &replica]
        .iter()
        .map(|o| o.output().matches("reason=\"created\"").count())
        .sum::<usize>();
    ensure!(created == 1, "the material was created {created} times");

    // Least privilege. The webhook's token cannot create Secrets next to its own, nor touch
    // another webhook configuration, nor read a team's client secret or its pods; the
    // controller's cannot touch the webhook configuration.
    let denied = |err: kube::Error, what: &str| -> anyhow::Result<()> {
        ensure!(
            matches!(&err, kube::Error::Api(s) if s.code == 403),
            "{what}: {err}"
        );
        Ok(())
    };
    let webhook_sa = cluster
        .client_for(&KubeApiServer::service_account_user(
            OPERATOR_NS,
            WEBHOOK_SA,
        ))
        .await?;
    let other: Secret = serde_json::from_value(json!({"metadata": {"name": "other"}}))?;
    let err = Api::<Secret>::namespaced(webhook_sa.clone(), OPERATOR_NS)
        .create(&PostParams::default(), &other)
        .await
        .expect_err("the webhook must not create Secrets");
    denied(err, "create a Secret")?;
    let err = Api::<MutatingWebhookConfiguration>::all(webhook_sa.clone())
        .patch(
            "someone-else",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect_err("the webhook must not patch other webhook configurations");
    denied(err, "patch another webhook configuration")?;
    let err = Api::<Secret>::namespaced(webhook_sa.clone(), TEAM)
        .get("civic-credentials")
        .await
        .expect_err("the webhook must not read client secrets");
    denied(err, "read a client secret")?;
    let err = Api::<Pod>::namespaced(webhook_sa, TEAM)
        .list(&ListParams::default())
        .await
        .expect_err("the webhook must not list pods");
    denied(err, "list pods")?;
    let controller_sa = cluster
        .client_for(&KubeApiServer::service_account_user(OPERATOR_NS, SA_NAME))
        .await?;
    let err = Api::<MutatingWebhookConfiguration>::all(controller_sa)
        .patch(
            WEBHOOK_CONFIG,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect_err("the controller must not patch the webhook configuration");
    denied(err, "the controller patches the webhook configuration")?;

    // The controller has judged both integrations.
    let cis: Api<CivicIntegration> = Api::namespaced(admin.clone(), TEAM);
    for (name, want) in [("civic", "True"), ("broken", "False")] {
        eventually(&format!("{name} Ready={want}"), EVENTUALLY, || async {
            let ci = cis.get(name).await?;
            Ok(ci
                .condition("Ready")
                .filter(|c| c.status == want)
                .map(|_| ()))
        })
        .await?;
    }

    let pods: Api<Pod> = Api::namespaced(admin.clone(), TEAM);

    // 1. A labelled pod is stored injected.
    let (status, warnings, _) =
        create_pod_eventually(&admin, &pod("agent-1", "agent", true, json!({}))).await?;
    ensure!(status == 201, "labelled pod: HTTP {status}");
    ensure!(
        warnings.is_empty(),
        "no warnings for a ready integration: {warnings:?}"
    );
    let stored = pods.get("agent-1").await?;
    ensure!(
        containers(&stored) == ["civic-sidecar", "app"],
        "{:?}",
        containers(&stored)
    );
    let spec = stored.spec.as_ref().unwrap();
    let app_env = spec.containers[0].env.clone().unwrap_or_default();
    ensure!(
        app_env.iter().any(|e| e.name == "CIVIC_MCP_URL"
            && e.value.as_deref() == Some("http://127.0.0.1:8931/hub/mcp")),
        "{app_env:?}"
    );
    ensure!(
        stored
            .annotations()
            .get("mcp.civic.com/injected")
            .map(String::as_str)
            == Some("civic/support")
    );
    let sidecar = &spec.init_containers.as_ref().context("init containers")?[0];
    ensure!(sidecar.image.as_deref() == Some("ghcr.io/civic-mcp/civic-sidecar:test"));
    // The fields a 1.20 apiserver dropped: kept by 1.34, so the kubelet runs it as a sidecar.
    ensure!(sidecar.restart_policy.as_deref() == Some("Always"));
    ensure!(
        sidecar.startup_probe.is_some(),
        "startup probe: {sidecar:?}"
    );
    let sc = sidecar
        .security_context
        .as_ref()
        .context("securityContext")?;
    ensure!(sc.run_as_non_root == Some(true) && sc.read_only_root_filesystem == Some(true));
    let projected = spec
        .volumes
        .iter()
        .flatten()
        // Not the first projected volume: since 1.24 that is the API token automount's.
        .find(|v| v.name == "civic-subject-token")
        .and_then(|v| v.projected.as_ref())
        .context("projected token volume")?;
    let token = projected.sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .context("serviceAccountToken")?;
    ensure!(token.audience.as_deref() == Some("civic"));
    ensure!(token.expiration_seconds == Some(3600));
    for app in &spec.containers {
        ensure!(
            app.volume_mounts
                .iter()
                .flatten()
                .all(|m| !m.name.starts_with("civic-"))
        );
    }
    // The sidecar holds no Kubernetes API credential: the ServiceAccount plugin, run again
    // after the webhook's patch, gave the pod's API token to the app only.
    const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let api_token_volume = |name: &str| {
        spec.volumes.iter().flatten().any(|v| {
            v.name == name
                && v.projected.as_ref().is_some_and(|p| {
                    p.sources.iter().flatten().any(|s| {
                        s.service_account_token
                            .as_ref()
                            .is_some_and(|t| t.audience.is_none())
                    })
                })
        })
    };
    let app_mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
    ensure!(
        app_mounts
            .iter()
            .any(|m| m.mount_path == API_TOKEN_DIR && api_token_volume(&m.name)),
        "the plugin ran: the app has the API token ({app_mounts:?})"
    );
    let sidecar_mounts = sidecar.volume_mounts.clone().unwrap_or_default();
    ensure!(
        sidecar_mounts.iter().all(|m| !api_token_volume(&m.name)),
        "the sidecar mounts the pod's API token: {sidecar_mounts:?}"
    );
    let over_api_path: Vec<_> = sidecar_mounts
        .iter()
        .filter(|m| m.mount_path == API_TOKEN_DIR)
        .collect();
    ensure!(
        over_api_path.len() == 1
            && over_api_path[0].read_only == Some(true)
            && spec
                .volumes
                .iter()
                .flatten()
                .any(|v| { v.name == over_api_path[0].name && v.empty_dir.is_some() }),
        "an empty read-only volume covers the API-token path in the sidecar: {sidecar_mounts:?}"
    );

    // 2. An unlabelled pod is untouched.
    let (status, _, _) =
        create_pod_eventually(&admin, &pod("agent-plain", "agent", false, json!({}))).await?;
    ensure!(status == 201);
    let plain = pods.get("agent-plain").await?;
    ensure!(containers(&plain) == ["app"], "{:?}", containers(&plain));
    ensure!(!plain.annotations().contains_key("mcp.civic.com/injected"));

    // 3. No binding selects it: admitted unchanged, with a warning.
    let (status, warnings, _) =
        create_pod_eventually(&admin, &pod("nobody-1", "nobody", true, json!({}))).await?;
    ensure!(status == 201);
    ensure!(
        warnings
            .iter()
            .any(|w| w.contains("no CivicIntegration binding")),
        "warning header: {warnings:?}"
    );
    ensure!(containers(&pods.get("nobody-1").await?) == ["app"]);

    // ... and, for a Deployment's pods, an Event on their ReplicaSet.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "nobody", "namespace": TEAM},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "nobody-deploy"}},
            "template": {
                "metadata": {"labels": {"app": "nobody-deploy", "mcp.civic.com/inject": "enabled"}},
                "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
            },
        },
    }))?;
    Api::<Deployment>::namespaced(admin.clone(), TEAM)
        .create(&PostParams::default(), &deployment)
        .await?;
    let events: Api<Event> = Api::namespaced(admin.clone(), TEAM);
    let event = eventually(
        "NotInjected Event on the ReplicaSet",
        EVENTUALLY,
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("NotInjected")
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ReplicaSet")
            }))
        },
    )
    .await?;
    ensure!(event.type_.as_deref() == Some("Warning"));
    let rs_pods = pods
        .list(&ListParams::default().labels("app=nobody-deploy"))
        .await?;
    ensure!(!rs_pods.items.is_empty(), "the ReplicaSet created its pods");
    for p in &rs_pods.items {
        ensure!(containers(p) == ["app"], "{:?}", containers(p));
    }
    let not_injected = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("NotInjected")
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ReplicaSet")
        })
        .count();
    ensure!(
        not_injected == 1,
        "one Event for the ReplicaSet's pods, got {not_injected}"
    );

    // 4. A pod that asks for a binding of a not-ready integration is denied, with the fix.
    let (status, _, body) = create_pod_eventually(
        &admin,
        &pod(
            "agent-denied",
            "broken",
            true,
            json!({"mcp.civic.com/binding": "broken/support"}),
        ),
    )
    .await?;
    let message = body["message"].as_str().unwrap_or_default();
    ensure!(status >= 400, "denied: HTTP {status} {body}");
    ensure!(
        message.contains("denied the request")
            && message.contains("CivicIntegration \"broken\" is not ready")
            && message.contains("SecretNotFound"),
        "{message}"
    );
    ensure!(pods.get_opt("agent-denied").await?.is_none());

    // Ambiguity is denied too, naming both candidates.
    apply_all(
        &admin,
        vec![integration(
            "second",
            "agent",
            "civic-credentials",
            &token_url,
        )],
    )
    .await?;
    let message = eventually("ambiguous pods denied", EVENTUALLY, || async {
        let (status, _, body) =
            create_pod(&admin, &pod("agent-ambiguous", "agent", true, json!({}))).await?;
        let message = body["message"].as_str().unwrap_or_default().to_owned();
        Ok((status >= 400 && message.contains("several CivicIntegrations")).then_some(message))
    })
    .await?;
    ensure!(
        message.contains("civic/support, second/support"),
        "{message}"
    );

    // An integration outside the operator's policy gets no pod: a token host not allowed, and
    // the audience of the apiserver's own issuer (refused from its discovery document).
    let mut outside = integration(
        "outside",
        "outside",
        "civic-credentials",
        "https://collector.example/t",
    );
    outside["spec"]["bindings"][0]["subject"]["serviceAccountToken"]["audience"] =
        json!(civic_testkit::apiserver::SERVICE_ACCOUNT_ISSUER);
    apply_all(&admin, vec![outside]).await?;
    let message = eventually(
        "pods of an integration outside the policy denied",
        EVENTUALLY,
        || async {
            let (status, _, body) =
                create_pod(&admin, &pod("agent-outside", "outside", true, json!({}))).await?;
            let message = body["message"].as_str().unwrap_or_default().to_owned();
            Ok((status >= 400 && message.contains("operator's policy")).then_some(message))
        },
    )
    .await?;
    ensure!(
        message.contains("token host \"collector.example\" is not allowed")
            && message.contains("policy.allowedTokenHosts")
            && message.contains("is an audience the Kubernetes API server accepts"),
        "{message}"
    );
    ensure!(pods.get_opt("agent-outside").await?.is_none());

    // 5. Rotation by the running process: the serving certificate is renewed by the same CA,
    // then the CA is replaced; when the new CA signs, caBundle still holds the old one too.
    let secrets_api: Api<Secret> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let key_of = |s: &Secret, key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let now = secrets_api.get(CERT_SECRET).await?;
    let (tls_before, signer_before) = (key_of(&now, "tls.crt"), key_of(&now, "signer.crt"));
    eventually("serving certificate renewed", EVENTUALLY, || async {
        let s = secrets_api.get(CERT_SECRET).await?;
        Ok((key_of(&s, "tls.crt") != tls_before).then_some(()))
    })
    .await?;
    let new_signer = eventually("CA rotated", EVENTUALLY, || async {
        let s = secrets_api.get(CERT_SECRET).await?;
        let signer = key_of(&s, "signer.crt");
        Ok((signer != signer_before).then_some(signer))
    })
    .await?;
    let bundle = ca_bundle(&configs.get(WEBHOOK_CONFIG).await?);
    let holds = |pem: &str| bundle.iter().any(|c| c.trim() == pem.trim());
    ensure!(
        holds(&new_signer) && holds(&signer_before),
        "old and new CA both trusted right after the rotation: {} CAs",
        bundle.len()
    );
    eventually(
        "the webhook serves a certificate of the new CA",
        EVENTUALLY,
        || async { Ok(webhook_trusted_by(addr, &new_signer).await?.then_some(())) },
    )
    .await?;
    eventually(
        "the second replica serves a certificate of the new CA",
        EVENTUALLY,
        || async {
            Ok(webhook_trusted_by(replica_addr, &new_signer)
                .await?
                .then_some(()))
        },
    )
    .await?;
    ensure!(
        operator.running() && replica.running(),
        "reloaded without a restart"
    );

    // The configuration re-created without a caBundle (a reinstall): filled in again.
    configs.delete(WEBHOOK_CONFIG, &Default::default()).await?;
    configs.create(&PostParams::default(), &config).await?;
    eventually("caBundle filled in again", EVENTUALLY, || async {
        let bundle = ca_bundle(&configs.get(WEBHOOK_CONFIG).await?);
        let stored = key_of(&secrets_api.get(CERT_SECRET).await?, "ca.crt");
        let want = civic_operator::certs::issue::split(&stored);
        Ok((!bundle.is_empty() && bundle == want).then_some(()))
    })
    .await?;

    // The webhook still injects after the rotation.
    let explicit = json!({"mcp.civic.com/binding": "civic/support"});
    let (status, _, _) =
        create_pod(&admin, &pod("agent-2", "agent", true, explicit.clone())).await?;
    ensure!(status == 201, "HTTP {status}");
    ensure!(containers(&pods.get("agent-2").await?) == ["civic-sidecar", "app"]);
    // Bindings are a boundary: the annotation cannot pick a binding that does not select the
    // pod.
    let (status, _, body) =
        create_pod(&admin, &pod("elsewhere-1", "elsewhere", true, explicit)).await?;
    let message = body["message"].as_str().unwrap_or_default();
    ensure!(
        status >= 400 && message.contains("civic/support does not select this pod"),
        "HTTP {status}: {message}"
    );
    ensure!(pods.get_opt("elsewhere-1").await?.is_none());

    // Metrics of the replica the apiserver called: outcomes and the latency histogram.
    let outcome = |o: &str| format!("civic_operator_admissions_total{{outcome=\"{o}\"}}");
    let mut answered = 0.0;
    for (o, at_least) in [("injected", 2.0), ("no_match", 3.0), ("denied", 2.0)] {
        let n = operator.metric(&outcome(o)).await?;
        ensure!(
            n >= at_least,
            "{o}: {n} admissions counted, want ≥ {at_least}"
        );
        answered += n;
    }
    let timed = operator
        .metric("civic_operator_admission_duration_seconds_count")
        .await?;
    ensure!(timed >= answered, "{timed} timed of {answered} answered");
    ensure!(
        replica.metric(&outcome("injected")).await? == 0.0,
        "the apiserver only calls the first replica"
    );

    drop(operator);
    drop(replica);
    drop(auth);
    cluster.capture("webhook").await?;
    Ok(())
}
