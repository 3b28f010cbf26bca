//! The harness the operator's real-apiserver test binaries share: the operator process with its
//! captured output, cluster setup (CRD, the chart's RBAC, namespaces), and small API helpers.
//! Each binary uses only part of it, hence the `dead_code` allowances.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use civic_operator::crd::CivicIntegration;
use civic_testkit::apiserver::KubeApiServer;
use civic_testkit::auth::FakeCivicAuth;
use civic_testkit::secrets::{self, CLIENT_ID, CLIENT_SECRET, CLIENT_SECRET_WRONG};
use civic_testkit::tls::TestCa;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

pub const OPERATOR_NS: &str = "civic-system";
/// The controller's ServiceAccount for release `civic-mcp` (`civic-mcp.serviceAccountName`).
pub const SA_NAME: &str = "civic-mcp-operator";
/// The webhook's ServiceAccount for release `civic-mcp` (`civic-mcp.webhookServiceAccountName`).
pub const WEBHOOK_SA: &str = "civic-mcp-webhook";
/// A user holding both the controller's and the webhook's roles (and nothing else), for tests
/// that run both in one process, as a local `civic-operator run` does; see [`bind_local_user`].
pub const LOCAL_USER: &str = "civic-operator-local";
pub const LEASE: &str = "civic-mcp-operator";
pub const TEAM: &str = "team";
pub const CI_NAME: &str = "civic";
pub const SECRET_NAME: &str = "civic-credentials";
/// The chart's name for release `civic-mcp` in [`OPERATOR_NS`] (`civic-mcp.webhookConfigName`);
/// `rbac.yaml` grants access by this name.
pub const WEBHOOK_CONFIG: &str = "civic-mcp-civic-system";
/// The chart's name for release `civic-mcp` (`civic-mcp.webhookCertSecretName`, self-managed mode).
pub const CERT_SECRET: &str = "civic-mcp-webhook-tls";

/// Flags of a test webhook: a free loopback port, a serving certificate that covers 127.0.0.1,
/// the chart's webhook configuration name and a fixed sidecar image.
/// The operator's policy as the tests need it: the fake Civic Auth and hub listen on loopback
/// (the chart's defaults allow Civic's hosts only). Environment, not flags, so that the scale
/// benchmark's build of an older commit ignores it.
pub const LOOPBACK_POLICY: [(&str, &str); 2] = [
    ("CIVIC_OPERATOR_ALLOWED_TOKEN_HOSTS", "localhost,127.0.0.1"),
    (
        "CIVIC_OPERATOR_ALLOWED_HUB_HOSTS",
        "localhost,127.0.0.1,app.civic.com",
    ),
];

pub const LOOPBACK_WEBHOOK: [&str; 8] = [
    "--webhook-addr",
    "127.0.0.1:0",
    "--webhook-extra-san",
    "127.0.0.1",
    "--webhook-config-name",
    WEBHOOK_CONFIG,
    "--sidecar-image",
    "ghcr.io/civic-mcp/civic-sidecar:test",
];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Polls `check` every 100 ms until it returns `Ok(Some(_))`, at most `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    eventually_every(what, limit, Duration::from_millis(100), check).await
}

/// Polls `check` every 200 ms until it returns `Ok(Some(_))`, at most `limit` (the pace of
/// the webhook and chart tiers).
pub async fn eventually_slowly<T, F, Fut>(
    what: &str,
    limit: Duration,
    check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    eventually_every(what, limit, Duration::from_millis(200), check).await
}

/// Polls `check` every `every` until it returns `Ok(Some(_))`, at most `limit`.
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "not yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what}: not true after {limit:?} (last: {last})");
        }
        tokio::time::sleep(every).await;
    }
}

/// A spawned `civic-operator`, its stdout and stderr copied to `target/civic-test-logs/` and kept
/// in memory; killed and its output scanned for secrets when stopped or dropped.
pub struct Process {
    pub name: String,
    child: Mutex<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    pub log_path: PathBuf,
    stopped: AtomicBool,
}

impl Process {
    /// Spawns `cmd` (the caller sets env and flags) with piped output, logged to `log_file`.
    pub fn spawn(name: &str, mut cmd: Command, log_file: &str) -> anyhow::Result<Self> {
        let log_path = civic_testkit::fs::test_logs_dir().join(log_file);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn civic-operator")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let file = Arc::new(Mutex::new(std::fs::File::create(&log_path)?));
        for out in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let (lines, file) = (lines.clone(), file.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = writeln!(file.lock().unwrap(), "{line}");
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Ok(Self {
            name: name.into(),
            child: Mutex::new(child),
            lines,
            log_path,
            stopped: AtomicBool::new(false),
        })
    }

    /// The first address logged on a line containing `marker` (e.g. "webhook listening");
    /// fails early if the process exits first.
    pub async fn logged_addr(&self, marker: &str, limit: Duration) -> anyhow::Result<SocketAddr> {
        eventually(
            &format!("operator {} logging {marker:?}", self.name),
            limit,
            || async {
                let found = self.find_addr(marker);
                if found.is_none() && !self.running() {
                    bail!("operator {} exited:\n{}", self.name, self.output());
                }
                Ok(found)
            },
        )
        .await
    }

    /// The address logged on a line containing `marker`, if any yet.
    pub fn find_addr(&self, marker: &str) -> Option<SocketAddr> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| civic_testkit::process::listening_addr(l, marker))
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?
            .success();
        ensure!(ok, "kill {sig} {pid}");
        Ok(())
    }

    pub fn running(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub async fn wait_exit(&self, limit: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                bail!("operator {} still running after {limit:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Lines logged since `from` (an index from [`Self::line_count`]).
    pub fn output_since(&self, from: usize) -> String {
        let lines = self.lines.lock().unwrap();
        lines.get(from..).unwrap_or_default().join("\n")
    }

    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Kills the process (a stopped one too) and fails the test if its output holds a secret.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let mut child = self.child.lock().unwrap();
            let _ = child.kill();
            let _ = child.wait();
        }
        // Give the reader threads a moment to drain the pipes.
        std::thread::sleep(Duration::from_millis(50));
        let leaks = secrets::find_leaks(&self.output(), &secrets::known_secrets());
        if !leaks.is_empty() && !std::thread::panicking() {
            panic!(
                "secrets in the output of operator {} ({}): {leaks:?}",
                self.name,
                self.log_path.display()
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `civic-operator run` replica and its admin address; stopped (and its output
/// scanned) when dropped.
pub struct Operator {
    pub process: Process,
    pub admin: SocketAddr,
    capture_metrics: bool,
}

impl std::ops::Deref for Operator {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl Operator {
    /// `civic-operator run` as replica `name` (its `POD_NAME`) of [`OPERATOR_NS`] under
    /// `kubeconfig`: a clean environment, the admin listener on a free loopback port and the
    /// tests' [`LOOPBACK_POLICY`]. Each tier adds its own flags.
    pub fn command(name: &str, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_civic-operator"));
        cmd.env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", OPERATOR_NS)
            .env("POD_NAME", name)
            .envs(LOOPBACK_POLICY)
            .args(["run", "--admin-addr", "127.0.0.1:0"]);
        cmd
    }

    /// Spawns `cmd`, logging to `log_file`, and waits up to `within` for its admin listener.
    pub async fn spawn(
        name: &str,
        cmd: Command,
        log_file: &str,
        within: Duration,
    ) -> anyhow::Result<Self> {
        let process = Process::spawn(name, cmd, log_file)?;
        let admin = process
            .logged_addr("admin endpoints listening", within)
            .await?;
        Ok(Self {
            process,
            admin,
            capture_metrics: false,
        })
    }

    /// When dropped, its final `/metrics` joins the log dir for the suite-wide secret scan (for
    /// replicas that are still answering at the end of their test).
    pub fn capturing_metrics(mut self) -> Self {
        self.capture_metrics = true;
        self
    }

    /// `GET path` on the admin listener: status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = civic_testkit::client::get(self.admin, path).await?;
        Ok((r.status, r.text()))
    }

    /// The value of one Prometheus sample, e.g. `civic_operator_leader`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = metrics_text(self.admin).await?;
        sample(&text, name)
            .with_context(|| format!("no sample {name} in /metrics of {}", self.name))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let metrics = self.capture_metrics.then(|| {
            civic_testkit::capture::capture_metrics(
                self.admin,
                &format!("operator-{}-metrics.txt", self.name),
                &format!("operator {}", self.name),
            )
        });
        self.process.stop();
        if let Some(Err(e)) = metrics
            && !std::thread::panicking()
        {
            panic!("{e:#}");
        }
    }
}

/// Creates the namespaced object `body` (any kind) in `ns` as `client`.
pub async fn create_in<K>(client: &Client, ns: &str, body: Value) -> anyhow::Result<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
    K::DynamicType: Default,
{
    let obj: K = serde_json::from_value(body)?;
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .create(&kube::api::PostParams::default(), &obj)
        .await?)
}

/// Waits until the operator has filled the caBundle of [`WEBHOOK_CONFIG`].
pub async fn wait_ca_bundle_filled(admin: &Client, within: Duration) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    eventually("caBundle filled in", within, || async {
        let c = configs.get(WEBHOOK_CONFIG).await?;
        let filled = c.webhooks.unwrap_or_default().first().is_some_and(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .is_some_and(|b| !b.0.is_empty())
        });
        Ok(filled.then_some(()))
    })
    .await
}

/// One finished run of a `civic-operator` command-line subcommand.
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `civic-operator <subcommand> <args>` under `kubeconfig` alone, echoes its output into the
/// test log, and fails if the output holds any secret the tests handed out.
pub async fn run_cli(kubeconfig: &Path, subcommand: &str, args: &[&str]) -> anyhow::Result<CliRun> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_civic-operator"))
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .arg(subcommand)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running civic-operator {subcommand}"))?;
    let run = CliRun {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    };
    eprintln!(
        "civic-operator {subcommand} {args:?} → {:?}\n{}{}",
        run.code, run.stdout, run.stderr
    );
    let leaks = secrets::find_leaks(
        &format!("{}{}", run.stdout, run.stderr),
        &secrets::known_secrets(),
    );
    ensure!(leaks.is_empty(), "secrets in the output: {leaks:?}");
    Ok(run)
}

/// The operator's `/metrics` text from its admin listener.
pub async fn metrics_text(admin: SocketAddr) -> anyhow::Result<String> {
    let r = civic_testkit::client::get(admin, "/metrics").await?;
    ensure!(r.status == 200, "/metrics answered {}", r.status);
    Ok(r.text())
}

/// The value of one sample of a Prometheus text, e.g. `civic_operator_leader`.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A cluster with the CRD, the chart's RBAC and the namespaces installed, a fake Civic Auth
/// over TLS, and a kubeconfig for the operator's ServiceAccount.
pub struct Env {
    pub cluster: KubeApiServer,
    pub admin: Client,
    pub auth: FakeCivicAuth,
    pub ca: TestCa,
    /// As the controller's ServiceAccount.
    pub kubeconfig: PathBuf,
    /// As the webhook's ServiceAccount.
    pub webhook_kubeconfig: PathBuf,
    /// As [`LOCAL_USER`]: controller and webhook in one process.
    pub local_kubeconfig: PathBuf,
}

/// `default_service_accounts`: create each namespace's `default` ServiceAccount too (there is
/// no controller-manager in this tier to do it).
pub async fn setup(
    crd_established_within: Duration,
    default_service_accounts: bool,
) -> anyhow::Result<Env> {
    setup_serving(crd_established_within, default_service_accounts, &[]).await
}

/// [`setup`] with the chart's namespaced Secret mode: `controller.secretNamespaces` set to
/// `secret_namespaces` (created here if they are not [`OPERATOR_NS`] or [`TEAM`]).
pub async fn setup_serving(
    crd_established_within: Duration,
    default_service_accounts: bool,
    secret_namespaces: &[&str],
) -> anyhow::Result<Env> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sa_user = KubeApiServer::service_account_user(OPERATOR_NS, SA_NAME);
    let webhook_user = KubeApiServer::service_account_user(OPERATOR_NS, WEBHOOK_SA);
    let cluster = KubeApiServer::builder()
        .service_account(OPERATOR_NS, SA_NAME)
        .service_account(OPERATOR_NS, WEBHOOK_SA)
        .user(LOCAL_USER, &["system:authenticated"])
        .start()
        .await
        .context("starting etcd + kube-apiserver (build them with scripts/kube/build.sh)")?;
    let admin = cluster.admin_client().await?;
    let mut namespaces = vec![OPERATOR_NS, TEAM];
    for ns in secret_namespaces {
        if !namespaces.contains(ns) {
            namespaces.push(ns);
        }
    }
    for ns in namespaces {
        if default_service_accounts {
            create_namespace(&admin, ns, json!({})).await?;
        } else {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
            Api::<Namespace>::all(admin.clone())
                .create(&PostParams::default(), &ns)
                .await?;
        }
    }
    install_crd(&admin, crd_established_within).await?;
    let rbac = chart_rbac_serving(secret_namespaces)?;
    install_rbac(&admin, &rbac).await?;
    bind_local_user(&admin, &rbac).await?;
    let ca = TestCa::new()?;
    let auth = FakeCivicAuth::start_tls(&ca).await?;
    secrets::register_secret(CLIENT_SECRET);
    secrets::register_secret(CLIENT_SECRET_WRONG);
    let kubeconfig = cluster.write_kubeconfig(&sa_user)?;
    let webhook_kubeconfig = cluster.write_kubeconfig(&webhook_user)?;
    let local_kubeconfig = cluster.write_kubeconfig(LOCAL_USER)?;
    Ok(Env {
        cluster,
        admin,
        auth,
        ca,
        kubeconfig,
        webhook_kubeconfig,
        local_kubeconfig,
    })
}

impl Env {
    /// The identity a `civic-operator run` with `flags` runs as: the controller's ServiceAccount
    /// for the controller alone (`--webhook-enabled false`), the webhook's for the webhook alone
    /// (`--controller-enabled false`), [`LOCAL_USER`] for both in one process.
    pub fn kubeconfig_for(&self, flags: &[&str]) -> &Path {
        let off = |flag: &str| flags.windows(2).any(|w| w[0] == flag && w[1] == "false");
        if off("--webhook-enabled") {
            &self.kubeconfig
        } else if off("--controller-enabled") {
            &self.webhook_kubeconfig
        } else {
            &self.local_kubeconfig
        }
    }
}

/// A namespace with a `default` ServiceAccount (no controller-manager here: the
/// ServiceAccount admission plugin wants the account to exist before pods are created).
pub async fn create_namespace(admin: &Client, name: &str, labels: Value) -> anyhow::Result<()> {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    Api::<ServiceAccount>::namespaced(admin.clone(), name)
        .create(&PostParams::default(), &sa)
        .await?;
    Ok(())
}

/// The checked-in CRD (a drift test keeps it equal to `civic-operator crd`).
pub async fn install_crd(admin: &Client, established_within: Duration) -> anyhow::Result<()> {
    let yaml =
        std::fs::read_to_string(repo_root().join("crds/civicintegrations.mcp.civic.com.yaml"))?;
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&yaml)?;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .context("the apiserver must accept the generated CRD")?;
    eventually("CRD established", established_within, || async {
        let crd = crds.get("civicintegrations.mcp.civic.com").await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        Ok(established.then_some(()))
    })
    .await
}

/// The helm binary: `scripts/install-helm.sh`'s, else the first on `PATH`.
pub fn helm_bin() -> anyhow::Result<PathBuf> {
    let cached = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/civic-mcp/bin/helm"))
        .filter(|p| p.is_file());
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("helm"))
            .find(|p| p.is_file())
    });
    cached.or(on_path).context(
        "helm not found in ~/.cache/civic-mcp/bin nor on PATH: run scripts/install-helm.sh",
    )
}

/// `charts/civic-mcp/templates/rbac.yaml` as `helm template` renders it for the release
/// `civic-mcp` in [`OPERATOR_NS`], with `controller.secretNamespaces` set to `secret_namespaces`.
pub fn chart_rbac_serving(secret_namespaces: &[&str]) -> anyhow::Result<Vec<Value>> {
    let home = civic_testkit::fs::TempDir::new("helm-template");
    let mut cmd = std::process::Command::new(helm_bin()?);
    cmd.args(["template", "civic-mcp"])
        .arg(repo_root().join("charts/civic-mcp"))
        .args([
            "--namespace",
            OPERATOR_NS,
            "--show-only",
            "templates/rbac.yaml",
        ])
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    if !secret_namespaces.is_empty() {
        cmd.args([
            "--set",
            &format!(
                "controller.secretNamespaces={{{}}}",
                secret_namespaces.join(",")
            ),
        ]);
    }
    let out = cmd.output().context("running helm template")?;
    ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&rendered) {
        let value = serde_json::to_value(
            <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc)?,
        )?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The chart's RBAC with its defaults (cluster-wide `get` on Secrets).
pub fn chart_rbac() -> anyhow::Result<Vec<Value>> {
    chart_rbac_serving(&[])
}

/// Binds [`LOCAL_USER`] to every (Cluster)Role of the chart's `rbac.yaml`, exactly those.
pub async fn bind_local_user(admin: &Client, rbac: &[Value]) -> anyhow::Result<()> {
    let bindings = rbac
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
        .cloned()
        .map(|mut b| {
            let name = format!(
                "{}-local",
                b["metadata"]["name"].as_str().unwrap_or_default()
            );
            b["metadata"]["name"] = json!(name);
            b["subjects"] = json!([{
                "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": LOCAL_USER,
            }]);
            b
        })
        .collect();
    apply_all(admin, bindings).await
}

/// Applies the chart's RBAC, which must hold each kind the operator is bound by.
pub async fn install_rbac(admin: &Client, docs: &[Value]) -> anyhow::Result<()> {
    for k in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        ensure!(docs.iter().any(|d| d["kind"] == k), "rbac.yaml lacks a {k}");
    }
    apply_all(admin, docs.to_vec()).await
}

/// Server-side applies every object (any kind) as the admin.
pub async fn apply_all(admin: &Client, docs: Vec<Value>) -> anyhow::Result<()> {
    for value in docs {
        let obj: DynamicObject = serde_json::from_value(value.clone())?;
        let tm = obj.types.clone().context("apiVersion/kind")?;
        let (group, version) = tm
            .api_version
            .split_once('/')
            .unwrap_or(("", tm.api_version.as_str()));
        let plural = format!("{}s", tm.kind.to_ascii_lowercase()).replace("policys", "policies");
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, &tm.kind),
            &plural,
        );
        let api: Api<DynamicObject> = match obj.namespace() {
            Some(ns) => Api::namespaced_with(admin.clone(), &ns, &ar),
            None => Api::all_with(admin.clone(), &ar),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply("civic-test").force(),
            &Patch::Apply(&value),
        )
        .await
        .with_context(|| format!("applying {} {}", tm.kind, obj.name_any()))?;
    }
    Ok(())
}

/// A valid integration `name` in `TEAM` for pods labelled `app: support-agent`.
pub fn integration(name: &str, token_url: &str) -> Value {
    json!({
        "apiVersion": "mcp.civic.com/v1alpha1",
        "kind": "CivicIntegration",
        "metadata": {"name": name, "namespace": TEAM},
        "spec": {
            "clientId": CLIENT_ID,
            "clientSecretRef": {"name": SECRET_NAME, "key": "client-secret"},
            "tokenUrl": token_url,
            "bindings": [{
                "name": "support",
                "podSelector": {"matchLabels": {"app": "support-agent"}},
                "profileId": secrets::PROFILE_ID,
                "subject": {"serviceAccountToken": {"audience": "civic"}},
            }],
        },
    })
}

/// Creates an integration from raw JSON (some test bodies are invalid on purpose, so they
/// cannot go through the Rust type).
pub async fn create_integration(admin: &Client, body: Value) -> Result<DynamicObject, kube::Error> {
    let ar = ApiResource::erase::<CivicIntegration>(&());
    let obj: DynamicObject = serde_json::from_value(body).expect("an object");
    Api::<DynamicObject>::namespaced_with(admin.clone(), TEAM, &ar)
        .create(&PostParams::default(), &obj)
        .await
}

/// Sets the client secret the integrations in `TEAM` reference.
pub async fn put_secret(admin: &Client, value: &str) -> anyhow::Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "namespace": TEAM},
        "stringData": {"client-secret": value},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), TEAM)
        .patch(
            SECRET_NAME,
            &PatchParams::apply("civic-test").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// The leader-election Lease's holder; `None` when absent or released.
pub async fn lease_holder(admin: &Client) -> anyhow::Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NS)
        .get_opt(LEASE)
        .await?;
    Ok(lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

/// Whether a TLS client that trusts only the certificates of `ca_pem` and asks for `name`
/// accepts the certificate served at `addr`.
pub async fn webhook_trusted_by(
    addr: SocketAddr,
    ca_pem: &str,
    name: rustls_pki_types::ServerName<'static>,
) -> anyhow::Result<bool> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    Ok(
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .context("handshake timed out")?
            .is_ok(),
    )
}

/// The chart's MutatingWebhookConfiguration (templates/mutatingwebhookconfiguration.yaml with
/// the default values), calling `url` instead of the Service.
pub fn chart_webhook_config(url: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [{
            "name": "inject.mcp.civic.com",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
            "matchPolicy": "Equivalent",
            "objectSelector": {"matchLabels": {"mcp.civic.com/inject": "enabled"}},
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": ["kube-system", "kube-public", "kube-node-lease", OPERATOR_NS]},
                {"key": "mcp.civic.com/inject", "operator": "NotIn", "values": ["disabled"]},
            ]},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "clientConfig": {"url": url},
        }],
    })
}

/// Creates a pod by a raw POST (so a denial's status and message stay visible); returns the
/// status and the body.
pub async fn create_pod(admin: &Client, ns: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let request = http::Request::post(format!("/api/v1/namespaces/{ns}/pods"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(body)?))?;
    let response = admin.send(request).await?;
    let status = response.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    Ok((status, serde_json::from_slice(&bytes)?))
}

/// Whether a stored pod (JSON) has the sidecar, as a container or a native sidecar.
pub fn is_injected(body: &Value) -> bool {
    body["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            body["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .any(|c| c["name"] == "civic-sidecar")
}

/// The webhook's TLS Secret as the chart creates it (templates/state.yaml): empty, so the release
/// owns it; the operator may only read and update it.
pub async fn create_empty_cert_secret(admin: &Client) -> anyhow::Result<()> {
    let empty: Secret = serde_json::from_value(json!({
        "metadata": {"name": CERT_SECRET, "namespace": OPERATOR_NS}, "type": "Opaque",
    }))?;
    Api::<Secret>::namespaced(admin.clone(), OPERATOR_NS)
        .create(&PostParams::default(), &empty)
        .await?;
    Ok(())
}
