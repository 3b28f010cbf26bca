//! Shared set-up for the sidecar's integration tests: the real binary between a fake Civic Auth
//! and a fake hub (or an official-SDK peer), with the workload side driven over real sockets.
#![allow(dead_code, unused_macros)] // each test binary uses a different part of this module

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use civic_sidecar::contract as c;
use civic_testkit::client::{self, HttpResponse};
use civic_testkit::fs::{TempDir, test_logs_dir, write_file};
use civic_testkit::secrets::{self, CLIENT_ID, CLIENT_SECRET, PROFILE_ID};
use civic_testkit::{
    FakeCivicAuth, FakeHub, Readiness, SidecarBuilder, SidecarProcess, TestCa, jwt,
};
use http::{Method, Request};
use http_body_util::Full;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_civic-sidecar");

/// The binary under test: `CIVIC_SIDECAR_BIN` (e.g. a release build) or the one cargo built.
pub fn bin() -> String {
    std::env::var("CIVIC_SIDECAR_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// The HTTP version between the sidecar and the fake hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubProtocol {
    /// HTTP/1.1 (over TLS the fake hub offers ALPN `http/1.1` only).
    Http1,
    /// HTTP/2: prior knowledge (h2c) on the plain hub, ALPN `h2` over TLS.
    H2,
}

/// The protocol matrix: each test file also builds as a `<name>_h2` target (sidecar/Cargo.toml)
/// that runs every test against an HTTP/2 hub; `CIVIC_TEST_HUB_PROTOCOL=h2|http1` overrides.
pub fn hub_protocol() -> HubProtocol {
    match std::env::var("CIVIC_TEST_HUB_PROTOCOL").as_deref() {
        Ok("h2") => HubProtocol::H2,
        Ok("http1") => HubProtocol::Http1,
        _ if env!("CARGO_CRATE_NAME").ends_with("_h2") => HubProtocol::H2,
        _ => HubProtocol::Http1,
    }
}

/// How the sidecar gets its subject.
#[derive(Debug, Clone)]
pub enum Subject {
    /// `CIVIC_SUBJECT_TOKEN_FILE` with a fresh subject JWT (the default).
    File,
    /// `CIVIC_SUBJECT_HEADER` naming this header.
    Header(String),
    /// `CIVIC_ACCESS_TOKEN_FILE` with a static testkit access token.
    Static,
}

/// Builder for [`Env`].
pub struct Setup {
    name: String,
    profile: Option<String>,
    lock: bool,
    subject: Subject,
    env: Vec<(String, String)>,
    readiness: Readiness,
    tls: bool,
    hub_url: Option<String>,
    hub_path: Option<String>,
    protocol: Option<HubProtocol>,
}

/// A running scenario. Call [`Env::finish`] at the end of every test.
pub struct Env {
    pub auth: FakeCivicAuth,
    pub hub: FakeHub,
    pub ca: Option<TestCa>,
    pub dir: TempDir,
    pub subject_file: PathBuf,
    pub secret_file: PathBuf,
    pub access_file: PathBuf,
    /// The subject token first written to `subject_file`.
    pub subject_token: String,
    /// The static token written to `access_file`.
    pub static_token: String,
    pub sidecar: SidecarProcess,
}

impl Setup {
    /// File-subject mode, profile [`PROFILE_ID`] locked, waits for `/readyz`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            profile: Some(PROFILE_ID.into()),
            lock: true,
            subject: Subject::File,
            env: Vec::new(),
            readiness: Readiness::Ready,
            tls: false,
            hub_url: None,
            hub_path: None,
            protocol: None,
        }
    }

    pub fn no_profile(mut self) -> Self {
        self.profile = None;
        self
    }

    pub fn lock(mut self, lock: bool) -> Self {
        self.lock = lock;
        self
    }

    pub fn subject(mut self, s: Subject) -> Self {
        self.subject = s;
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn readiness(mut self, r: Readiness) -> Self {
        self.readiness = r;
        self
    }

    /// Serve the fake auth and hub over HTTPS and pass their CA in `CIVIC_CA_FILE`.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Speak `protocol` to the fake hub, whatever the matrix says.
    pub fn hub_protocol(mut self, protocol: HubProtocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Use this hub URL instead of the fake hub's `/hub/mcp` (e.g. an SDK peer).
    pub fn hub_url(mut self, url: impl Into<String>) -> Self {
        self.hub_url = Some(url.into());
        self
    }

    /// Use `<fake hub base><path>` as the hub URL.
    pub fn hub_path(mut self, path: &str) -> Self {
        self.hub_path = Some(path.into());
        self
    }

    /// Start the fakes, then the sidecar. Scripting of the fakes that must apply to the very
    /// first exchange goes in `before_spawn`.
    pub async fn start_with(
        self,
        before_spawn: impl FnOnce(&FakeCivicAuth, &FakeHub),
    ) -> anyhow::Result<Env> {
        let ca = if self.tls { Some(TestCa::new()?) } else { None };
        let protocol = self.protocol.unwrap_or_else(hub_protocol);
        let (auth, hub) = match &ca {
            Some(ca) => (
                FakeCivicAuth::start_tls(ca).await?,
                match protocol {
                    HubProtocol::H2 => FakeHub::start_tls(ca).await?,
                    HubProtocol::Http1 => FakeHub::start_tls_http1_only(ca).await?,
                },
            ),
            None => (FakeCivicAuth::start().await?, FakeHub::start().await?),
        };
        before_spawn(&auth, &hub);
        let dir = TempDir::new("sidecar-test");
        let subject_token = jwt::mint_subject(
            "system:serviceaccount:team-a:agent",
            Duration::from_secs(3600),
        );
        let static_token = jwt::mint_access(
            "static-user",
            Some(jwt::now_unix() + 3600),
            self.profile.as_deref(),
        );
        let subject_file = dir.write("subject-token", &subject_token);
        let secret_file = dir.write("client-secret", CLIENT_SECRET);
        let access_file = dir.write("access-token", &static_token);

        let mut b: SidecarBuilder = SidecarProcess::builder(bin(), &self.name)
            .env(
                c::ENV_HUB_URL,
                match (&self.hub_url, &self.hub_path) {
                    (Some(u), _) => u.clone(),
                    (None, Some(p)) => format!("{}{p}", hub.base_url()),
                    (None, None) => hub.url(),
                },
            )
            .env(c::ENV_TOKEN_URL, auth.token_url())
            .env(c::ENV_CLIENT_ID, CLIENT_ID)
            .env_path(c::ENV_CLIENT_SECRET_FILE, &secret_file)
            .env(
                c::ENV_PROFILE_LOCK,
                if self.lock { "true" } else { "false" },
            )
            .readiness(self.readiness);
        if let Some(p) = &self.profile {
            b = b.env(c::ENV_PROFILE_ID, p);
        }
        if let Some(ca) = &ca {
            b = b.env_path(c::ENV_CA_FILE, ca.ca_file());
        }
        b = match &self.subject {
            Subject::File => b.env_path(c::ENV_SUBJECT_TOKEN_FILE, &subject_file),
            Subject::Header(h) => b.env(c::ENV_SUBJECT_HEADER, h),
            Subject::Static => b.env_path(c::ENV_ACCESS_TOKEN_FILE, &access_file),
        };
        // The plain fake hub speaks both; the sidecar needs to be told to use h2c. Over TLS,
        // ALPN decides. Other hubs (SDK peers, relays) keep the default.
        if protocol == HubProtocol::H2 && self.hub_url.is_none() && ca.is_none() {
            b = b.env(c::ENV_HUB_PROTOCOL, "h2");
        }
        for (k, v) in &self.env {
            b = b.env(k, v);
        }
        let sidecar = b.spawn().await?;
        Ok(Env {
            auth,
            hub,
            ca,
            dir,
            subject_file,
            secret_file,
            access_file,
            subject_token,
            static_token,
            sidecar,
        })
    }

    pub async fn start(self) -> anyhow::Result<Env> {
        self.start_with(|_, _| {}).await
    }
}

impl Env {
    /// The proxy listener.
    pub fn addr(&self) -> SocketAddr {
        self.sidecar.proxy_addr()
    }

    /// POST a JSON-RPC request to the sidecar.
    pub async fn post(&self, body: &Value) -> anyhow::Result<HttpResponse> {
        client::post_mcp(self.addr(), body).await
    }

    /// POST `tools/list` with this id.
    pub async fn call(&self, id: u64) -> anyhow::Result<HttpResponse> {
        self.post(&client::jsonrpc(id, "tools/list")).await
    }

    /// A request builder for `/hub/mcp` with the usual MCP headers.
    pub fn request(&self, method: Method) -> http::request::Builder {
        client::mcp_request(self.addr(), method)
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> anyhow::Result<HttpResponse> {
        client::send(self.addr(), req).await
    }

    /// Replace the subject token file (as the kubelet rotates a projected token).
    pub fn rotate_subject(&self, token: &str) {
        write_file(&self.subject_file, token);
    }

    pub fn finish(self) {
        self.sidecar.finish();
    }
}

/// Assert a sidecar-made error: this status, a JSON-RPC error body with `id: null` and a message
/// that contains one of `mentions` (case-insensitive), and no secret.
pub fn assert_sidecar_error(resp: &HttpResponse, status: u16, mentions: &[&str]) {
    assert_eq!(resp.status, status, "status; body: {}", resp.text());
    let v = resp.json().expect("sidecar error bodies are JSON");
    assert_eq!(v["jsonrpc"], "2.0", "JSON-RPC error body: {v}");
    assert!(v["id"].is_null(), "id must be null: {v}");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        v["error"]["code"].is_i64(),
        "error.code must be an integer: {v}"
    );
    assert!(
        mentions
            .iter()
            .any(|m| msg.contains(&m.to_ascii_lowercase())),
        "error message {msg:?} should mention one of {mentions:?}"
    );
    assert_no_secret_in(&resp.text(), "error body");
    for (k, v) in &resp.headers {
        assert_no_secret_in(&format!("{k}: {v}"), "error response header");
    }
}

/// Fail if `text` contains any secret the testkit handed out.
pub fn assert_no_secret_in(text: &str, what: &str) {
    let leaks = secrets::find_leaks(text, &secrets::known_secrets());
    assert!(
        leaks.is_empty(),
        "statement 20: {what} contains secrets: {leaks:?}"
    );
}

/// Poll `f` every 10 ms until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The repository's `tests/peers` directory.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("peers")
}

/// Fail (never skip) when the SDK peers are not installed.
pub fn require_peers() -> PathBuf {
    let dir = peers_dir();
    let venv = dir.join(".venv").join("bin").join("python");
    let sdk = dir
        .join("node_modules")
        .join("@modelcontextprotocol")
        .join("sdk")
        .join("package.json");
    assert!(
        venv.exists() && sdk.exists(),
        "the official MCP SDK peers are not installed ({} or {} missing): run `tests/peers/install.sh` first",
        venv.display(),
        sdk.display()
    );
    dir
}

/// A peer process (SDK server) whose output goes to `target/civic-test-logs/`; killed on drop.
pub struct Peer {
    child: Child,
    pub port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    log_path: PathBuf,
}

impl Peer {
    /// Spawn `cmd` and wait for its `LISTENING port=<n>` line.
    pub async fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        use std::io::{BufRead as _, BufReader, Write as _};
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn peer {name}"))?;
        let log_path = test_logs_dir().join(format!("peer-{name}-{}.log", child.id()));
        let file = Arc::new(Mutex::new(std::fs::File::create(&log_path)?));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let outs: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in outs {
            let (lines, file) = (lines.clone(), file.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = writeln!(file.lock().unwrap(), "{line}");
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let port = lines.lock().unwrap().iter().find_map(|l| {
                l.strip_prefix("LISTENING port=")
                    .and_then(|p| p.trim().parse().ok())
            });
            if let Some(port) = port {
                return Ok(Self {
                    child,
                    port,
                    lines,
                    log_path,
                });
            }
            if let Some(st) = child.try_wait()? {
                bail!(
                    "peer {name} exited with {st}: {}",
                    lines.lock().unwrap().join("\n")
                );
            }
            if Instant::now() > end {
                let _ = child.kill();
                bail!(
                    "peer {name} did not print LISTENING: {}",
                    lines.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hub/mcp", self.port)
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read a JSON-lines header log written by the SDK peers.
pub fn read_header_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every value of header `name` (any case) in one entry of an SDK peer's header log.
pub fn logged_header(entry: &Value, name: &str) -> Vec<String> {
    entry["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .filter_map(|h| h[1].as_str().map(String::from))
        .collect()
}

/// `sha256:<hex>`, as the peers' header logs show bearer tokens.
pub fn token_digest(token: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(token.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A short fingerprint of a value that may hold a secret, for failure messages.
pub fn fingerprint<T: std::fmt::Debug>(v: &T) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(format!("{v:?}").as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// `assert_eq!` for values that may hold tokens or secrets: a failure shows fingerprints only.
/// Textually scoped (`#[macro_use] mod common;`), not exported: the `_h2` test targets include
/// their test file, and an exported macro from included code cannot be named by path.
macro_rules! assert_secret_eq {
    ($left:expr, $right:expr $(,)?) => {
        assert_secret_eq!($left, $right, "values differ")
    };
    // `match` keeps temporaries alive for the comparison, as `assert_eq!` does.
    ($left:expr, $right:expr, $($msg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    panic!(
                        "{} (secret-bearing values; fingerprints {} != {})",
                        format!($($msg)+),
                        $crate::common::fingerprint(l),
                        $crate::common::fingerprint(r)
                    );
                }
            }
        }
    };
}

/// `assert_ne!` for values that may hold tokens or secrets.
macro_rules! assert_secret_ne {
    ($left:expr, $right:expr $(,)?) => {
        assert_secret_ne!($left, $right, "values are equal")
    };
    ($left:expr, $right:expr, $($msg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l == r {
                    panic!(
                        "{} (secret-bearing values; fingerprint {})",
                        format!($($msg)+),
                        $crate::common::fingerprint(l)
                    );
                }
            }
        }
    };
}

/// An official-SDK MCP server standing in for the hub.
pub enum Upstream {
    /// The Python SDK server, both protocol eras (`gzip`: compressed responses).
    PythonDualEra { gzip: bool },
    /// The TypeScript SDK server, legacy era only.
    NodeLegacy,
}

/// Starts `kind`, logging each request's headers to `header_log`.
pub async fn start_upstream(name: &str, kind: &Upstream, header_log: &Path) -> Peer {
    let dir = require_peers();
    let mut cmd = match kind {
        Upstream::PythonDualEra { gzip } => {
            let mut cmd = Command::new(dir.join(".venv/bin/python"));
            cmd.arg(dir.join("py_server.py"))
                .arg("--header-log")
                .arg(header_log);
            if *gzip {
                cmd.arg("--gzip");
            }
            cmd
        }
        Upstream::NodeLegacy => {
            let mut cmd = Command::new("node");
            cmd.arg(dir.join("node_server.mjs"))
                .arg("--header-log")
                .arg(header_log);
            cmd
        }
    };
    cmd.current_dir(&dir);
    Peer::spawn(name, cmd).await.unwrap()
}

/// Run one official client (`python-legacy`, `python-auto` or `node`) against `url`; returns
/// its JSON report.
pub async fn run_client(client: &str, url: &str) -> Value {
    let dir = require_peers();
    let mut cmd = match client {
        "python-legacy" | "python-auto" => {
            let mut c = tokio::process::Command::new(dir.join(".venv/bin/python"));
            c.arg(dir.join("py_client.py"))
                .arg(url)
                .arg("--mode")
                .arg(client.trim_start_matches("python-"))
                .arg("--slow");
            c
        }
        "node" => {
            let mut c = tokio::process::Command::new("node");
            c.arg(dir.join("node_client.mjs")).arg(url).arg("--slow");
            c
        }
        other => panic!("unknown client {other}"),
    };
    cmd.current_dir(&dir).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{client} client did not finish in 60 s"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_no_secret_in(&stdout, "client output");
    assert_no_secret_in(&stderr, "client output");
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "{client} printed no JSON; status {:?}\nstdout: {stdout}\nstderr: {stderr}",
                out.status
            )
        });
    let mut v: Value = serde_json::from_str(line).unwrap();
    v["client"] = Value::String(client.into());
    if !out.status.success() {
        v["stderr_tail"] = Value::String(
            stderr
                .chars()
                .rev()
                .take(800)
                .collect::<String>()
                .chars()
                .rev()
                .collect(),
        );
    }
    v
}

/// Check a client report: connected, listed both tools, echoed, streamed progress.
pub fn check_report(v: &Value) -> Result<(), String> {
    let ok = v["ok"].as_bool() == Some(true)
        && v["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == "echo") && t.iter().any(|x| x == "slow"))
        && v["echo"] == "hello through the sidecar"
        && v["slow"] == "done after 3 steps";
    if ok { Ok(()) } else { Err(format!("{v}")) }
}
