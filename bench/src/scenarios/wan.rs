//! A hub across a WAN: per-tool-call latency with the hub 40 ms away (a [`DelayRelay`] holding
//! every chunk 20 ms each way), reached directly (the client attaching the bearer itself) and
//! through the sidecar (plain HTTP on 127.0.0.1), in one run.
//!
//! Hubs: the testkit's TLS fake hub offering `h2` and `http/1.1`, and its HTTP/1.1-only
//! variant, each answering as a minimal MCP server. The sidecar's token endpoint is the fake
//! Civic Auth on loopback, undelayed: the token is exchanged once at start and then served
//! from the cache, so its distance would not show in any per-call figure.
//!
//! Clients × modes: the official Python MCP client (`tests/peers/py_bench_client.py`, mcp
//! 2.3.0) and a Rust hyper client, each with a new MCP session per tool call (initialize,
//! notifications/initialized, tools/call, DELETE, on new connections, as langchain-mcp-adapters
//! does) and with one long-lived session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use civic_testkit::hub::{HubReply, RecordedRequest, issued_by_fake_auth};
use civic_testkit::{DelayRelay, FakeCivicAuth, FakeHub, SidecarProcess};
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::{Value, json};

use super::Env;
use crate::error::{BenchError, Result};

/// One-way delay of the relay: 40 ms round trip.
pub const ONE_WAY: Duration = Duration::from_millis(20);
/// The token the direct clients send (the hub accepts it besides the fake Civic Auth's).
const DIRECT_TOKEN: &str = "direct-caller-token";
const SESSION_ID: &str = "bench-wan-session";

/// How a client uses MCP sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    SessionPerCall,
    LongLived,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::SessionPerCall => "session-per-call",
            Mode::LongLived => "long-lived",
        }
    }
}

/// One measured cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub client: &'static str,
    pub mode: Mode,
    /// `h2` (the hub offers h2 and http/1.1) or `http1` (the hub offers http/1.1 only).
    pub hub: &'static str,
    /// `direct` or `sidecar`.
    pub path: &'static str,
    pub calls: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    /// TCP connections that reached the hub (through the relay) while the cell ran.
    pub hub_connections: usize,
    /// What the hub saw while the cell ran (warm-up included): `METHOD jsonrpc-method HTTP/x`
    /// → count.
    pub hub_requests: BTreeMap<String, usize>,
    /// Error text when the cell could not be measured.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WanFigures {
    pub rtt_ms: f64,
    pub calls_per_cell: usize,
    pub warmup_per_cell: usize,
    /// The Python interpreter used, or why the Python cells are missing.
    pub python: String,
    pub cells: Vec<Cell>,
}

impl WanFigures {
    pub fn cell(&self, client: &str, mode: Mode, hub: &str, path: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.client == client && c.mode == mode && c.hub == hub && c.path == path)
    }
}

/// The p-th percentile (nearest rank) of `v`, in ms.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A minimal MCP server: initialize (with a session id), tools/list, tools/call `echo`,
/// notifications (202), GET (405: no server-initiated stream), DELETE (200).
fn mcp_reply(req: &RecordedRequest) -> HubReply {
    match req.method.as_str() {
        "GET" => return HubReply::status(405).header("allow", "POST, DELETE"),
        "DELETE" => return HubReply::status(200),
        _ => {}
    }
    let Some(msg) = req.json() else {
        return HubReply::status(400);
    };
    let Some(id) = msg.get("id").cloned() else {
        return HubReply::accepted();
    };
    let result = match msg["method"].as_str().unwrap_or("") {
        "initialize" => json!({
            "protocolVersion": msg["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "bench-wan-hub", "version": "1.0.0"}
        }),
        "tools/list" => json!({"tools": [{
            "name": "echo",
            "description": "echoes its text",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}
        }]}),
        "tools/call" => json!({"content": [{"type": "text", "text": "hello"}], "isError": false}),
        _ => json!({}),
    };
    let reply = HubReply::json(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
    if msg["method"] == "initialize" {
        reply.header("mcp-session-id", SESSION_ID)
    } else {
        reply
    }
}

/// A hub behind its relay, and the sidecar in front of both.
struct Site {
    name: &'static str,
    hub: FakeHub,
    relay: DelayRelay,
    sidecar: SidecarProcess,
}

impl Site {
    async fn start(env: &Env, auth: &FakeCivicAuth, h2: bool) -> Result<Self> {
        let hub = if h2 {
            FakeHub::start_tls(&env.ca).await
        } else {
            FakeHub::start_tls_http1_only(&env.ca).await
        }
        .map_err(|e| BenchError::setup("start the fake hub", e))?;
        hub.set_validator(|t| t == DIRECT_TOKEN || issued_by_fake_auth(t));
        hub.set_responder(mcp_reply);
        let relay = DelayRelay::to(hub.addr(), ONE_WAY)
            .await
            .map_err(|e| BenchError::setup("start the delay relay", e))?;
        let name = if h2 { "h2" } else { "http1" };
        let url = format!("https://localhost:{}/hub/mcp", relay.addr().port());
        let sidecar = env
            .start_sidecar_for_hub(&format!("wan-{name}"), &url, auth)
            .await?;
        Ok(Self {
            name,
            hub,
            relay,
            sidecar,
        })
    }

    fn direct_url(&self) -> String {
        format!("https://localhost:{}/hub/mcp", self.relay.addr().port())
    }
}

pub async fn run(env: &Env, auth: &FakeCivicAuth) -> Result<WanFigures> {
    let calls = env.plan.wan_calls;
    let warmup = env.plan.wan_warmup;
    let python = python_peer();
    let mut cells = Vec::new();
    for h2 in [true, false] {
        let site = Site::start(env, auth, h2).await?;
        // The pool's warm connection is up once a first call went through.
        let mut warm = RustClient::connect(site.sidecar.proxy_addr(), None).await?;
        warm.call(0).await?;
        drop(warm);
        for mode in [Mode::SessionPerCall, Mode::LongLived] {
            for path in ["direct", "sidecar"] {
                let before = (site.hub.connections(), site.hub.request_count());
                let rust = rust_cell(env, &site, mode, path, warmup, calls).await;
                cells.push(cell("rust", mode, &site, path, rust, before));
                if let Ok(py) = &python {
                    let before = (site.hub.connections(), site.hub.request_count());
                    let out = python_cell(env, py, &site, mode, path, warmup, calls).await;
                    cells.push(cell("python", mode, &site, path, out, before));
                }
            }
        }
        eprintln!(
            "  hub {}: {} requests on {} connections in all",
            site.name,
            site.hub.request_count(),
            site.hub.connections()
        );
        site.sidecar.finish();
    }
    for c in &cells {
        eprintln!(
            "  {} {} {} {}: hub saw {:?}",
            c.client,
            c.mode.name(),
            c.hub,
            c.path,
            c.hub_requests
        );
        eprintln!(
            "  {:6} {:16} hub {:5} {:7}: p50 {:7.1} ms, p90 {:7.1} ms, {} hub connection(s){}",
            c.client,
            c.mode.name(),
            c.hub,
            c.path,
            c.p50_ms,
            c.p90_ms,
            c.hub_connections,
            c.error
                .as_deref()
                .map(|e| format!(" ERROR {e}"))
                .unwrap_or_default()
        );
    }
    Ok(WanFigures {
        rtt_ms: (ONE_WAY * 2).as_secs_f64() * 1000.0,
        calls_per_cell: calls,
        warmup_per_cell: warmup,
        python: match python {
            Ok((p, _)) => p.display().to_string(),
            Err(e) => e,
        },
        cells,
    })
}

fn cell(
    client: &'static str,
    mode: Mode,
    site: &Site,
    path: &'static str,
    out: Result<Vec<f64>>,
    (hub_before, requests_before): (usize, usize),
) -> Cell {
    let hub_connections = site.hub.connections() - hub_before;
    let mut hub_requests = BTreeMap::new();
    for r in site.hub.requests().iter().skip(requests_before) {
        let rpc = r
            .json()
            .and_then(|v| v.get("method").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        let key = format!("{} {rpc} {:?}", r.method, r.version).replace("  ", " ");
        *hub_requests.entry(key).or_insert(0) += 1;
    }
    match out {
        Ok(mut ms) => {
            ms.sort_by(f64::total_cmp);
            Cell {
                client,
                mode,
                hub: site.name,
                path,
                calls: ms.len(),
                p50_ms: percentile(&ms, 50.0),
                p90_ms: percentile(&ms, 90.0),
                hub_connections,
                hub_requests,
                error: None,
            }
        }
        Err(e) => Cell {
            client,
            mode,
            hub: site.name,
            path,
            calls: 0,
            p50_ms: f64::NAN,
            p90_ms: f64::NAN,
            hub_connections,
            hub_requests,
            error: Some(e.to_string()),
        },
    }
}

/// The Python interpreter of `tests/peers/.venv` (or `CIVIC_BENCH_PYTHON`) and the driver
/// script, or why they are missing.
fn python_peer() -> std::result::Result<(PathBuf, PathBuf), String> {
    let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers");
    let python = std::env::var_os("CIVIC_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| peers.join(".venv/bin/python"));
    let script = peers.join("py_bench_client.py");
    if !python.is_file() {
        return Err(format!(
            "no Python peer at {} (tests/peers/install.sh)",
            python.display()
        ));
    }
    Ok((python, script))
}

async fn python_cell(
    env: &Env,
    (python, script): &(PathBuf, PathBuf),
    site: &Site,
    mode: Mode,
    path: &str,
    warmup: usize,
    calls: usize,
) -> Result<Vec<f64>> {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script);
    if path == "direct" {
        cmd.arg(site.direct_url())
            .arg("--token-env")
            .arg("CIVIC_BENCH_TOKEN")
            .arg("--ca")
            .arg(env.ca.ca_file())
            .env("CIVIC_BENCH_TOKEN", DIRECT_TOKEN);
    } else {
        cmd.arg(site.sidecar.mcp_url());
    }
    cmd.args(["--mode", mode.name()])
        .args(["--calls", &calls.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .map_err(|_| BenchError::Check("python client: no answer in 300 s".into()))?
        .map_err(|e| BenchError::io("run the python client", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        BenchError::Check(format!(
            "python client output ({e}): {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    if v["ok"] != true {
        return Err(BenchError::Check(format!("python client: {}", v["error"])));
    }
    Ok(v["ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default())
}

async fn rust_cell(
    env: &Env,
    site: &Site,
    mode: Mode,
    path: &str,
    warmup: usize,
    calls: usize,
) -> Result<Vec<f64>> {
    let (addr, tls) = if path == "direct" {
        let mut config = (*env
            .ca
            .client_config()
            .map_err(|e| BenchError::setup("TLS client config", e))?)
        .clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        (site.relay.addr(), Some(Arc::new(config)))
    } else {
        (site.sidecar.proxy_addr(), None)
    };
    let mut ms = Vec::with_capacity(calls);
    match mode {
        Mode::SessionPerCall => {
            for i in 0..warmup + calls {
                let t = Instant::now();
                let mut c = RustClient::connect(addr, tls.clone()).await?;
                c.session().await?;
                c.call(i as u64).await?;
                c.delete().await?;
                if i >= warmup {
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        Mode::LongLived => {
            let mut c = RustClient::connect(addr, tls).await?;
            c.session().await?;
            for i in 0..warmup + calls {
                let t = Instant::now();
                c.call(i as u64).await?;
                if i >= warmup {
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
    }
    Ok(ms)
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A Rust MCP client on one connection: HTTP/2 when the TLS server offers it, HTTP/1.1
/// keep-alive otherwise; it attaches the bearer itself over TLS (the hub reached directly).
struct RustClient {
    sender: Sender,
    uri: String,
    host: String,
    tls: bool,
    session: Option<String>,
}

impl RustClient {
    async fn connect(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError::io("connect", e))?;
        tcp.set_nodelay(true)
            .map_err(|e| BenchError::io("nodelay", e))?;
        let hs = |e: hyper::Error| BenchError::Check(format!("HTTP handshake: {e}"));
        let is_tls = tls.is_some();
        let sender = match tls {
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from("localhost")
                    .map_err(|e| BenchError::Check(format!("server name: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| BenchError::io("TLS handshake", e))?;
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = TokioIo::new(stream);
                if h2 {
                    let (s, conn) = http2::Builder::new(TokioExecutor::new())
                        .handshake(io)
                        .await
                        .map_err(hs)?;
                    tokio::spawn(conn);
                    Sender::H2(s)
                } else {
                    let (s, conn) = http1::handshake(io).await.map_err(hs)?;
                    tokio::spawn(conn);
                    Sender::H1(s)
                }
            }
            None => {
                let (s, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(hs)?;
                tokio::spawn(conn);
                Sender::H1(s)
            }
        };
        let host = if is_tls {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        let scheme = if is_tls { "https" } else { "http" };
        Ok(Self {
            sender,
            uri: format!("{scheme}://{host}/hub/mcp"),
            host,
            tls: is_tls,
            session: None,
        })
    }

    async fn send(&mut self, method: Method, body: Option<Value>) -> Result<(u16, Option<String>)> {
        let mut b = Request::builder().method(method);
        b = match &self.sender {
            Sender::H2(_) => b.uri(&self.uri),
            Sender::H1(_) => b.uri("/hub/mcp").header("host", &self.host),
        };
        b = b.header("accept", "application/json, text/event-stream");
        if self.tls {
            b = b.header("authorization", format!("Bearer {DIRECT_TOKEN}"));
        }
        if let Some(s) = &self.session {
            b = b.header("mcp-session-id", s);
        }
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = b
            .body(body)
            .map_err(|e| BenchError::Check(format!("request: {e}")))?;
        let send_err = |e: hyper::Error| BenchError::Check(format!("send: {e}"));
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(send_err)?;
                s.send_request(req).await.map_err(send_err)?
            }
            Sender::H2(s) => {
                s.ready().await.map_err(send_err)?;
                s.send_request(req).await.map_err(send_err)?
            }
        };
        let status = resp.status().as_u16();
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        resp.into_body()
            .collect()
            .await
            .map_err(|e| BenchError::Check(format!("body: {e}")))?;
        Ok((status, session))
    }

    fn expect(status: u16, want: u16, what: &str) -> Result<()> {
        if status == want {
            Ok(())
        } else {
            Err(BenchError::Check(format!("{what} answered {status}")))
        }
    }

    /// initialize + notifications/initialized.
    async fn session(&mut self) -> Result<()> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "civic-bench", "version": "1"}}});
        let (status, session) = self.send(Method::POST, Some(init)).await?;
        Self::expect(status, 200, "initialize")?;
        self.session = session;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let (status, _) = self.send(Method::POST, Some(note)).await?;
        Self::expect(status, 202, "notifications/initialized")
    }

    async fn call(&mut self, id: u64) -> Result<()> {
        let call = json!({"jsonrpc": "2.0", "id": id + 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hello"}}});
        let (status, _) = self.send(Method::POST, Some(call)).await?;
        Self::expect(status, 200, "tools/call")
    }

    async fn delete(&mut self) -> Result<()> {
        let (status, _) = self.send(Method::DELETE, None).await?;
        Self::expect(status, 200, "DELETE")
    }
}

/// The goals, per client and hub: (a) new session per call, sidecar p50 ≤ direct p50 − 1 RTT;
/// (b) long-lived, sidecar p50 ≤ the client's direct p50 on that hub + 1 ms. Each entry:
/// (client, hub, sidecar p50, limit, met).
pub fn goal_checks(
    w: &WanFigures,
    mode: Mode,
) -> Vec<(&'static str, &'static str, f64, f64, bool)> {
    let mut out = Vec::new();
    let clients: Vec<&'static str> = {
        let mut v: Vec<&'static str> = w.cells.iter().map(|c| c.client).collect();
        v.dedup();
        let mut seen = BTreeMap::new();
        v.retain(|c| seen.insert(*c, ()).is_none());
        v
    };
    for client in clients {
        for hub in ["h2", "http1"] {
            let (Some(d), Some(s)) = (
                w.cell(client, mode, hub, "direct"),
                w.cell(client, mode, hub, "sidecar"),
            ) else {
                continue;
            };
            let limit = match mode {
                Mode::SessionPerCall => d.p50_ms - w.rtt_ms,
                Mode::LongLived => d.p50_ms + 1.0,
            };
            let met = s.p50_ms.is_finite() && limit.is_finite() && s.p50_ms <= limit;
            out.push((client, hub, s.p50_ms, limit, met));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v[..1], 90.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
