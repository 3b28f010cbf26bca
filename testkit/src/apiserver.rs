//! A real kube-apiserver (1.34, built by `scripts/kube/build.sh`) with etcd on loopback, for the
//! real-apiserver test tier (docs/architecture.md §6 tier 4).
//!
//! Each [`KubeApiServer`] owns a temp dir with its etcd data, PKI, static token file and
//! kubeconfigs; dropping it kills every process it started. Users authenticate with static bearer
//! tokens; authorization is `Node,RBAC`, so a registered non-admin user has only what RBAC grants.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use civic_testkit::apiserver::KubeApiServer;
//! let cluster = KubeApiServer::builder()
//!     .service_account("civic-system", "civic-operator")
//!     .with_controller_manager()
//!     .start()
//!     .await?;
//! let admin = cluster.admin_client().await?;
//! let operator = cluster.client_for(&KubeApiServer::service_account_user("civic-system", "civic-operator")).await?;
//! # let _ = (admin, operator); Ok(()) }
//! ```

mod pki;
mod process;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

use self::pki::Pki;
use self::process::{ManagedProcess, free_port, lost_port_race};

/// The Kubernetes version `scripts/kube/build.sh` builds.
pub const KUBE_VERSION: &str = "1.34.4";
/// Overrides where the kube binaries live (`$CIVIC_KUBE_DIR/bin/kube-apiserver`).
pub const KUBE_DIR_ENV: &str = "CIVIC_KUBE_DIR";
/// The built-in admin user (group `system:masters`).
pub const ADMIN_USER: &str = "civic-test-admin";
/// Issuer of service-account tokens minted by this apiserver.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts when a component loses the race for a port picked by `free_port`.
const PORT_ATTEMPTS: usize = 3;
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const KILL_WAIT: Duration = Duration::from_secs(5);

/// `$CIVIC_KUBE_DIR`, or `$HOME/.cache/civic-mcp/kube-1.34.4`.
pub fn kube_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(KUBE_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(format!(".cache/civic-mcp/kube-{KUBE_VERSION}"))
}

/// A user the static token file authenticates.
#[derive(Clone)]
struct User {
    name: String,
    groups: Vec<String>,
    token: String,
}

impl User {
    fn new(name: &str, groups: &[&str]) -> Self {
        let bytes: [u8; 24] = rand::random();
        let token = bytes.iter().fold(String::with_capacity(48), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        Self {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            token,
        }
    }

    /// One line of `--token-auth-file`: `token,user,uid,"group1,group2"`.
    fn csv_line(&self) -> String {
        let mut line = format!("{},{},{}", self.token, self.name, self.name);
        if !self.groups.is_empty() {
            let _ = write!(line, ",\"{}\"", self.groups.join(","));
        }
        line
    }
}

/// Configures a [`KubeApiServer`] before it starts.
#[must_use]
pub struct KubeApiServerBuilder {
    users: Vec<User>,
    controller_manager: bool,
    ready_timeout: Duration,
    extra_apiserver_args: Vec<String>,
}

impl std::fmt::Debug for KubeApiServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        f.debug_struct("KubeApiServerBuilder")
            .field("users", &users)
            .field("controller_manager", &self.controller_manager)
            .field("ready_timeout", &self.ready_timeout)
            .field("extra_apiserver_args", &self.extra_apiserver_args)
            .finish()
    }
}

impl Default for KubeApiServerBuilder {
    fn default() -> Self {
        Self {
            users: vec![User::new(ADMIN_USER, &["system:masters"])],
            controller_manager: false,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            extra_apiserver_args: Vec::new(),
        }
    }
}

impl KubeApiServerBuilder {
    /// Registers a token-authenticated user with these groups (`system:authenticated` is added
    /// by the apiserver). Re-registering a name replaces it.
    pub fn user(mut self, name: &str, groups: &[&str]) -> Self {
        self.users.retain(|u| u.name != name);
        self.users.push(User::new(name, groups));
        self
    }

    /// Registers a user that looks to RBAC exactly like the ServiceAccount `namespace/name`
    /// (`system:serviceaccount:<ns>:<name>` with the service-account groups), so RoleBindings to
    /// that ServiceAccount apply to it. Its name is [`KubeApiServer::service_account_user`].
    pub fn service_account(self, namespace: &str, name: &str) -> Self {
        let user = KubeApiServer::service_account_user(namespace, name);
        let ns_group = format!("system:serviceaccounts:{namespace}");
        self.user(
            &user,
            &["system:serviceaccounts", &ns_group, "system:authenticated"],
        )
    }

    /// Also runs kube-controller-manager: garbage collection, namespace deletion, ReplicaSets and
    /// default ServiceAccounts (the ServiceAccount admission plugin rejects pods until the
    /// namespace's account exists, so tests that create pods want this).
    pub fn with_controller_manager(mut self) -> Self {
        self.controller_manager = true;
        self
    }

    /// How long to wait for `/readyz` (and for the controller manager). Default 120 s.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// An extra kube-apiserver flag such as `--v=4`; later flags override earlier ones.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_apiserver_args.push(arg.into());
        self
    }

    /// Starts etcd, kube-apiserver (and kube-controller-manager if asked) and waits until ready.
    pub async fn start(self) -> anyhow::Result<KubeApiServer> {
        KubeApiServer::start_with(self).await
    }
}

/// Where the binaries are.
#[derive(Debug, Clone)]
struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
}

impl Binaries {
    fn locate(need_controller_manager: bool) -> anyhow::Result<Self> {
        Self::locate_in(&kube_dir(), need_controller_manager)
    }

    fn locate_in(kube_dir: &Path, need_controller_manager: bool) -> anyhow::Result<Self> {
        let bin = kube_dir.join("bin");
        let hint = "run `scripts/kube/build.sh` (as root) to build etcd, kube-apiserver and \
                    kube-controller-manager, or set CIVIC_KUBE_DIR";
        let apiserver = bin.join("kube-apiserver");
        let controller_manager = bin.join("kube-controller-manager");
        if !apiserver.is_file() {
            bail!("{} not found: {hint}", apiserver.display());
        }
        if need_controller_manager && !controller_manager.is_file() {
            bail!("{} not found: {hint}", controller_manager.display());
        }
        // The etcd built beside the apiserver, never another one on PATH: the pair is pinned.
        let etcd = bin.join("etcd");
        if !etcd.is_file() {
            bail!("{} not found: {hint}", etcd.display());
        }
        Ok(Self {
            etcd,
            apiserver,
            controller_manager,
        })
    }
}

/// A running etcd + kube-apiserver (+ kube-controller-manager) on 127.0.0.1.
pub struct KubeApiServer {
    // Field order matters for Drop: processes are killed in `drop`, the dir is removed after.
    controller_manager: Option<ManagedProcess>,
    apiserver: Option<ManagedProcess>,
    etcd: ManagedProcess,
    pki: Pki,
    users: Vec<User>,
    binaries: Binaries,
    port: u16,
    etcd_port: u16,
    ready_timeout: Duration,
    extra_apiserver_args: Vec<String>,
    ready_after: Duration,
    dir: TempDir,
}

impl std::fmt::Debug for KubeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens stay out of Debug output.
        let users: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        f.debug_struct("KubeApiServer")
            .field("url", &self.url())
            .field("etcd_port", &self.etcd_port)
            .field("users", &users)
            .field("dir", &self.dir.path())
            .field("controller_manager", &self.controller_manager.is_some())
            .finish_non_exhaustive()
    }
}

impl KubeApiServer {
    /// etcd + kube-apiserver with only the admin user.
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    pub fn builder() -> KubeApiServerBuilder {
        KubeApiServerBuilder::default()
    }

    /// The user name the apiserver gives the ServiceAccount `namespace/name`.
    pub fn service_account_user(namespace: &str, name: &str) -> String {
        format!("system:serviceaccount:{namespace}:{name}")
    }

    async fn start_with(builder: KubeApiServerBuilder) -> anyhow::Result<Self> {
        // reqwest and kube use rustls without picking a provider; ring is the only one built.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let binaries = Binaries::locate(builder.controller_manager)?;
        let started = Instant::now();
        let dir = temp_dir()?;
        let pki = Pki::generate()?;
        write_files(dir.path(), &pki, &builder.users)?;

        let (etcd, etcd_port) = start_etcd(&binaries.etcd, dir.path(), builder.ready_timeout)
            .await
            .context("starting etcd")?;
        let mut cluster = Self {
            controller_manager: None,
            apiserver: None,
            etcd,
            pki,
            users: builder.users,
            binaries,
            port: 0,
            etcd_port,
            ready_timeout: builder.ready_timeout,
            extra_apiserver_args: builder.extra_apiserver_args,
            ready_after: Duration::ZERO,
            dir,
        };
        cluster.start_apiserver_on_free_port().await?;
        cluster.ready_after = started.elapsed();
        eprintln!(
            "civic-testkit: etcd + kube-apiserver {KUBE_VERSION} ready at {} after {:.1}s",
            cluster.url(),
            cluster.ready_after.as_secs_f64()
        );
        if builder.controller_manager {
            let cm_started = Instant::now();
            cluster.start_controller_manager().await?;
            eprintln!(
                "civic-testkit: kube-controller-manager ready after {:.1}s",
                cm_started.elapsed().as_secs_f64()
            );
        }
        Ok(cluster)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The apiserver's secure port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_cert_pem
    }

    /// The temp dir holding logs, PKI, token file and kubeconfigs (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Time from `start()` until etcd and the apiserver were ready.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The bearer token of a registered user.
    pub fn token_for(&self, user: &str) -> anyhow::Result<String> {
        Ok(self.user(user)?.token.clone())
    }

    fn user(&self, name: &str) -> anyhow::Result<&User> {
        self.users.iter().find(|u| u.name == name).with_context(|| {
            format!("user {name:?} was not registered with KubeApiServer::builder().user(…)")
        })
    }

    /// A client authenticated as the admin (`system:masters`).
    pub async fn admin_client(&self) -> anyhow::Result<kube::Client> {
        self.client_for(ADMIN_USER).await
    }

    /// A client authenticated as a registered user.
    pub async fn client_for(&self, user: &str) -> anyhow::Result<kube::Client> {
        let token = self.user(user)?.token.clone();
        self.client_with_token(&token).await
    }

    /// A client presenting any bearer token (e.g. a TokenRequest result, or an invalid one).
    pub async fn client_with_token(&self, token: &str) -> anyhow::Result<kube::Client> {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_json(self.port, "client", token))
            .context("parsing generated kubeconfig")?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("building kube config")?;
        kube::Client::try_from(config).context("building kube client")
    }

    /// Writes a kubeconfig for a registered user (CA inline, bearer token, namespace `default`)
    /// and returns its path, for a spawned process's `KUBECONFIG`.
    pub fn write_kubeconfig(&self, user: &str) -> anyhow::Result<PathBuf> {
        let token = &self.user(user)?.token;
        let file_name: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = self.dir.path().join(format!("kubeconfig-{file_name}"));
        write_private(
            &path,
            self.kubeconfig_json(self.port, user, token).as_bytes(),
        )?;
        Ok(path)
    }

    /// JSON is YAML, so this is a valid kubeconfig.
    fn kubeconfig_json(&self, port: u16, user: &str, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.pki.ca_cert_pem.as_bytes());
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "civic-test", "cluster": {
                "server": format!("https://127.0.0.1:{port}"),
                "certificate-authority-data": ca,
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "civic-test", "context": {
                "cluster": "civic-test", "user": user, "namespace": "default",
            }}],
            "current-context": "civic-test",
        })
        .to_string()
    }

    /// Stops and starts the apiserver on the same port, keeping etcd (and its data), the PKI and
    /// the users; waits until it is ready again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop_apiserver().await?;
        self.start_apiserver().await
    }

    /// Kills the apiserver (SIGKILL) and waits for it to exit; etcd keeps running.
    pub async fn stop_apiserver(&mut self) -> anyhow::Result<()> {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.kill().await?;
        }
        Ok(())
    }

    /// Starts the apiserver again on its port after [`Self::stop_apiserver`].
    pub async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        if self.apiserver.is_some() {
            bail!("kube-apiserver is already running");
        }
        let mut apiserver = self.spawn_apiserver(self.port)?;
        match self.wait_apiserver_ready(&mut apiserver).await {
            Ok(()) => {
                self.apiserver = Some(apiserver);
                Ok(())
            }
            Err(e) => {
                apiserver.kill().await?;
                Err(e)
            }
        }
    }

    /// For the suite-wide secret scan: writes every Event, CivicIntegration (spec and status)
    /// and Pod to `target/civic-test-logs/cluster-<label>.jsonl` and copies the components' logs
    /// next to it; fails if the cluster state holds a known secret. Call at the end of a test.
    pub async fn capture(&self, label: &str) -> anyhow::Result<()> {
        let admin = self.admin_client().await?;
        crate::capture::dump_cluster_state(&admin, label).await?;
        for component in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            let from = self.dir.path().join(format!("{component}.log"));
            if from.exists() {
                let to =
                    crate::fs::test_logs_dir().join(format!("cluster-{label}-{component}.log"));
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        }
        Ok(())
    }

    /// The tail of a component's log: `"etcd"`, `"kube-apiserver"`, `"kube-controller-manager"`.
    pub fn log_tail(&self, component: &str) -> String {
        process::log_tail(&self.dir.path().join(format!("{component}.log")))
    }

    async fn start_apiserver_on_free_port(&mut self) -> anyhow::Result<()> {
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port()?;
            let mut apiserver = self.spawn_apiserver(port)?;
            match self.wait_apiserver_ready_on(&mut apiserver, port).await {
                Ok(()) => {
                    self.port = port;
                    self.apiserver = Some(apiserver);
                    return Ok(());
                }
                Err(e) => {
                    apiserver.kill().await?;
                    if attempt == PORT_ATTEMPTS || !lost_port_race(&apiserver.log) {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    fn spawn_apiserver(&self, port: u16) -> anyhow::Result<ManagedProcess> {
        let d = self.dir.path();
        let path = |name: &str| d.join(name).into_os_string();
        let mut args: Vec<OsString> = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port).into(),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}").into(),
            flag("--tls-cert-file", path("apiserver.crt")),
            flag("--tls-private-key-file", path("apiserver.key")),
            flag("--client-ca-file", path("ca.crt")),
            flag("--token-auth-file", path("tokens.csv")),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,\
             DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,\
             ResourceQuota,Priority,NodeRestriction"
                .into(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}").into(),
            flag("--service-account-key-file", path("sa.pub")),
            flag("--service-account-signing-key-file", path("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            // Endpoints may not be loopback; with no reconciler the apiserver does not keep
            // trying to write 127.0.0.1 into the `kubernetes` Endpoints.
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        args.extend(self.extra_apiserver_args.iter().map(OsString::from));
        ManagedProcess::spawn(
            "kube-apiserver",
            &self.binaries.apiserver,
            &args,
            d.join("kube-apiserver.log"),
        )
    }

    async fn wait_apiserver_ready(&self, apiserver: &mut ManagedProcess) -> anyhow::Result<()> {
        self.wait_apiserver_ready_on(apiserver, self.port).await
    }

    /// Polls `/readyz` as admin until it answers `ok`.
    async fn wait_apiserver_ready_on(
        &self,
        apiserver: &mut ManagedProcess,
        port: u16,
    ) -> anyhow::Result<()> {
        let admin = &self.user(ADMIN_USER)?.token;
        // Not `self.port`: on first start the port is only adopted once this succeeds.
        let kubeconfig = self.kubeconfig_json(port, ADMIN_USER, admin);
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::from_yaml(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if apiserver.exit_status().is_some() {
                return Err(apiserver.failure("exited before it was ready"));
            }
            let request = http::Request::get("/readyz").body(Vec::new())?;
            let last =
                match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
                    .await
                {
                    Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                    Ok(Ok(body)) => body,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
            if Instant::now() >= deadline {
                return Err(apiserver.failure(&format!(
                    "not ready after {:?} (last /readyz: {last})",
                    self.ready_timeout
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path().to_path_buf();
        let kubeconfig = self.write_kubeconfig(ADMIN_USER)?;
        let path = |name: &str| d.join(name).into_os_string();
        let args: Vec<OsString> = vec![
            flag("--kubeconfig", kubeconfig.into_os_string()),
            "--leader-elect=false".into(),
            // No serving at all: fixed default ports would collide between parallel tests.
            "--secure-port=0".into(),
            flag("--service-account-private-key-file", path("sa.key")),
            flag("--root-ca-file", path("ca.crt")),
            "--use-service-account-credentials=false".into(),
            // Faster than the defaults, so garbage collection shows within seconds in tests.
            "--concurrent-gc-syncs=5".into(),
        ];
        let mut cm = ManagedProcess::spawn(
            "kube-controller-manager",
            &self.binaries.controller_manager,
            &args,
            d.join("kube-controller-manager.log"),
        )?;
        // Ready when the ServiceAccount controller has made `default/default`.
        let client = self.admin_client().await?;
        let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client, "default");
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if cm.exit_status().is_some() {
                return Err(cm.failure("exited before it was ready"));
            }
            if let Ok(Some(_)) = accounts.get_opt("default").await {
                self.controller_manager = Some(cm);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let e = cm.failure("made no default ServiceAccount in time");
                cm.kill().await?;
                return Err(e);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        // Dependents first, etcd last; each reaped before the temp dir goes.
        if let Some(cm) = self.controller_manager.as_mut() {
            cm.kill_blocking(KILL_WAIT);
        }
        if let Some(apiserver) = self.apiserver.as_mut() {
            apiserver.kill_blocking(KILL_WAIT);
        }
        self.etcd.kill_blocking(KILL_WAIT);
    }
}

fn flag(name: &str, value: OsString) -> OsString {
    let mut s = OsString::from(name);
    s.push("=");
    s.push(value);
    s
}

const TEMP_PREFIX: &str = "civic-kube-";
const OWNER_FILE: &str = "owner.pid";

/// On tmpfs when there is one: etcd fsyncs every write, which is slow on a VM disk.
fn temp_dir() -> anyhow::Result<TempDir> {
    let shm = Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    let dir = match shm.is_dir().then(|| builder.tempdir_in(shm)) {
        Some(Ok(dir)) => dir,
        _ => builder.tempdir().context("creating temp dir")?,
    };
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
    if let Some(parent) = dir.path().parent() {
        remove_orphaned_dirs(parent);
    }
    Ok(dir)
}

/// Removes dirs left by test processes that were killed before their destructors ran (their
/// etcd data would otherwise hold tmpfs memory until reboot).
fn remove_orphaned_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE));
        let alive = match owner.as_deref().map(str::trim).map(str::parse::<u32>) {
            Ok(Ok(pid)) => Path::new(&format!("/proc/{pid}")).exists(),
            // Mid-creation by another process, or not ours: leave it.
            _ => true,
        };
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn write_files(dir: &Path, pki: &Pki, users: &[User]) -> anyhow::Result<()> {
    write_private(&dir.join("ca.crt"), pki.ca_cert_pem.as_bytes())?;
    write_private(&dir.join("apiserver.crt"), pki.serving_cert_pem.as_bytes())?;
    write_private(&dir.join("apiserver.key"), pki.serving_key_pem.as_bytes())?;
    write_private(&dir.join("sa.key"), pki.sa_key_pem.as_bytes())?;
    write_private(&dir.join("sa.pub"), pki.sa_pub_pem.as_bytes())?;
    let tokens: String = users.iter().map(|u| u.csv_line() + "\n").collect();
    write_private(&dir.join("tokens.csv"), tokens.as_bytes())?;
    Ok(())
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}

/// Starts etcd on two free loopback ports and waits for `/health`; retries a lost port race.
async fn start_etcd(
    etcd: &Path,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<(ManagedProcess, u16)> {
    for attempt in 1..=PORT_ATTEMPTS {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data_dir = dir.join(format!("etcd-data-{attempt}"));
        let args: Vec<OsString> = vec![
            "--name=civic-test".into(),
            flag("--data-dir", data_dir.into_os_string()),
            format!("--listen-client-urls={client_url}").into(),
            format!("--advertise-client-urls={client_url}").into(),
            format!("--listen-peer-urls={peer_url}").into(),
            format!("--initial-advertise-peer-urls={peer_url}").into(),
            format!("--initial-cluster=civic-test={peer_url}").into(),
            "--initial-cluster-state=new".into(),
            "--logger=zap".into(),
        ];
        let mut proc = ManagedProcess::spawn("etcd", etcd, &args, dir.join("etcd.log"))?;
        match wait_etcd_healthy(&mut proc, client_port, timeout).await {
            Ok(()) => return Ok((proc, client_port)),
            Err(e) => {
                proc.kill().await?;
                if attempt == PORT_ATTEMPTS || !lost_port_race(&proc.log) {
                    return Err(e);
                }
            }
        }
    }
    unreachable!("the last attempt returns")
}

async fn wait_etcd_healthy(
    etcd: &mut ManagedProcess,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if etcd.exit_status().is_some() {
            return Err(etcd.failure("exited before it was healthy"));
        }
        if let Ok(Ok(answer)) = tokio::time::timeout(
            Duration::from_secs(2),
            process::http_get_loopback(port, "/health"),
        )
        .await
            && answer.contains("\"health\":\"true\"")
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(etcd.failure(&format!("not healthy after {timeout:?}")));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_line_quotes_groups() {
        let user = User::new(
            "system:serviceaccount:ns:sa",
            &["system:serviceaccounts", "system:serviceaccounts:ns"],
        );
        let line = user.csv_line();
        assert_eq!(
            line,
            format!(
                "{},system:serviceaccount:ns:sa,system:serviceaccount:ns:sa,\
                 \"system:serviceaccounts,system:serviceaccounts:ns\"",
                user.token
            )
        );
        assert_eq!(user.token.len(), 48);
        assert_ne!(user.token, User::new("x", &[]).token);
        assert_eq!(
            User::new("bob", &[]).csv_line().matches(',').count(),
            2,
            "no group column without groups"
        );
    }

    #[test]
    fn builder_replaces_a_user_and_keeps_admin() {
        let b = KubeApiServer::builder()
            .user("alice", &["a"])
            .user("alice", &["b"])
            .service_account("civic-system", "civic-operator");
        let names: Vec<&str> = b.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                ADMIN_USER,
                "alice",
                "system:serviceaccount:civic-system:civic-operator"
            ]
        );
        assert_eq!(b.users[1].groups, ["b"]);
        assert!(
            b.users[2]
                .groups
                .contains(&"system:serviceaccounts:civic-system".to_owned())
        );
        assert!(
            !format!("{b:?}").contains(&b.users[0].token),
            "Debug must not show tokens"
        );
    }

    #[test]
    fn missing_binaries_is_an_error_naming_the_build_script() {
        let err = Binaries::locate_in(Path::new("/nonexistent/civic-kube"), true)
            .expect_err("no binaries there");
        assert!(err.to_string().contains("scripts/kube/build.sh"), "{err}");
    }
}
