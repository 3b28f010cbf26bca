//! protocol.md §7 statements 29 and 30 with the official MCP SDKs (protocol.md §5): the Python
//! client (mcp 2.3.0, legacy and auto) and the TypeScript client (@modelcontextprotocol/sdk
//! 1.32.2) reach the dual-era Python server and the legacy-only Node server through the sidecar
//! with no credentials; the upstream's header log shows only the sidecar's token.
//!
//! Needs `tests/peers/install.sh` (fails, never skips, without it).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use civic_testkit::secrets::PROFILE_ID;
use common::{Env, Peer, Setup, read_header_log, require_peers, token_digest};
use serde_json::Value;

enum Upstream {
    PythonDualEra { gzip: bool },
    NodeLegacy,
}

async fn start_upstream(name: &str, kind: &Upstream, header_log: &Path) -> Peer {
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

/// Run one official client against `url`; returns its JSON report.
async fn run_client(client: &str, url: &str) -> Value {
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
    common::assert_no_secret_in(&stdout, "client output");
    common::assert_no_secret_in(&stderr, "client output");
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
fn check_report(v: &Value) -> Result<(), String> {
    let ok = v["ok"].as_bool() == Some(true)
        && v["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == "echo") && t.iter().any(|x| x == "slow"))
        && v["echo"] == "hello through the sidecar"
        && v["slow"] == "done after 3 steps";
    if ok { Ok(()) } else { Err(format!("{v}")) }
}

/// Every request the upstream logged carried exactly one bearer, one the fake Civic Auth issued,
/// and exactly one profile header with the configured UUID.
fn check_header_log(env: &Env, log: &[Value]) -> Result<usize, String> {
    let issued: Vec<String> = env
        .auth
        .issued_tokens()
        .iter()
        .map(|t| token_digest(t))
        .collect();
    let mut problems = Vec::new();
    for (i, e) in log.iter().enumerate() {
        let headers = e["headers"].as_array().cloned().unwrap_or_default();
        let values = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|h| h[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
                .filter_map(|h| h[1].as_str().map(String::from))
                .collect()
        };
        let auth = values("authorization");
        match auth.as_slice() {
            [one]
                if one
                    .strip_prefix("Bearer ")
                    .is_some_and(|d| issued.iter().any(|t| t == d)) => {}
            other => problems.push(format!(
                "entry {i} {} {}: Authorization {other:?} is not a token the sidecar obtained",
                e["method"], e["path"]
            )),
        }
        if values("x-civic-profile-id") != vec![PROFILE_ID.to_string()] {
            problems.push(format!(
                "entry {i}: x-civic-profile-id {:?}",
                values("x-civic-profile-id")
            ));
        }
        if e["status"] == 401 {
            problems.push(format!("entry {i}: upstream answered 401"));
        }
    }
    if log.is_empty() {
        problems.push("the upstream logged no request".into());
    }
    if problems.is_empty() {
        Ok(log.len())
    } else {
        Err(problems.join("\n"))
    }
}

async fn all_clients_through_sidecar(name: &str, kind: Upstream) {
    require_peers();
    let dir = civic_testkit::fs::TempDir::new("peer-log");
    let header_log = dir.path().join("headers.jsonl");
    let peer = start_upstream(name, &kind, &header_log).await;
    let env = Setup::new(name).hub_url(peer.url()).start().await.unwrap();
    let url = env.sidecar.mcp_url();
    let mut failures = Vec::new();
    let mut reports = Vec::new();
    for client in ["python-legacy", "python-auto", "node"] {
        let report = run_client(client, &url).await;
        if let Err(e) = check_report(&report) {
            failures.push(format!("{client}: {e}"));
        }
        reports.push(report);
    }
    let log = read_header_log(&header_log);
    if let Err(e) = check_header_log(&env, &log) {
        failures.push(format!("upstream header log:\n{e}"));
    }
    let methods: std::collections::BTreeSet<String> = log
        .iter()
        .filter_map(|e| e["method"].as_str().map(String::from))
        .collect();
    eprintln!(
        "{name}: {} upstream requests, methods {methods:?}",
        log.len()
    );
    for r in &reports {
        eprintln!("  {r}");
    }
    if let Upstream::PythonDualEra { gzip: true } = kind {
        let gz = log.iter().any(|e| {
            e["response_headers"].as_array().is_some_and(|h| {
                h.iter()
                    .any(|kv| kv[0] == "content-encoding" && kv[1] == "gzip")
            })
        });
        eprintln!("  gzip-encoded upstream responses relayed: {gz}");
    }
    assert!(
        failures.is_empty(),
        "{name}:\n{}\nsidecar log: {}\npeer log: {}\npeer output:\n{}",
        failures.join("\n"),
        env.sidecar.log_path().display(),
        peer.log_path().display(),
        peer.output()
    );
    // Legacy shapes were exercised: sessions, the GET stream and DELETE went through.
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods:?}"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s30_official_clients_via_sidecar_to_python_dual_era_server() {
    all_clients_through_sidecar(
        "s30_python_dual_era_server",
        Upstream::PythonDualEra { gzip: false },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s30_official_clients_via_sidecar_to_node_legacy_server() {
    all_clients_through_sidecar("s30_node_legacy_server", Upstream::NodeLegacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s29_gzip_upstream_with_official_clients() {
    all_clients_through_sidecar(
        "s29_gzip_python_server",
        Upstream::PythonDualEra { gzip: true },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s30_peers_reject_requests_without_the_sidecar() {
    // Control: the upstream really enforces tokens, so the positive tests mean something.
    require_peers();
    let dir = civic_testkit::fs::TempDir::new("peer-log");
    let header_log = dir.path().join("headers.jsonl");
    for (name, kind) in [
        ("control_python", Upstream::PythonDualEra { gzip: false }),
        ("control_node", Upstream::NodeLegacy),
    ] {
        let peer = start_upstream(name, &kind, &header_log).await;
        for client in ["python-auto", "node"] {
            let v = run_client(client, &peer.url()).await;
            assert_eq!(
                v["ok"], false,
                "{name}/{client}: a direct call without a token must fail: {v}"
            );
        }
    }
}
