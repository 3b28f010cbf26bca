//! docs/protocol.md statements 29 and 30 with the official MCP SDKs (its §5): the Python
//! client (mcp 2.3.0, legacy and auto) and the TypeScript client (@modelcontextprotocol/sdk
//! 1.32.2) reach the dual-era Python server and the legacy-only Node server through the sidecar
//! with no credentials; the upstream's header log shows only the sidecar's token.
//!
//! Needs `tests/peers/install.sh` (fails, never skips, without it).

mod common;

use civic_testkit::secrets::PROFILE_ID;
use common::{
    Env, Setup, Upstream, check_report, logged_header, read_header_log, require_peers, run_client,
    start_upstream, token_digest,
};
use serde_json::Value;

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
        let values = |name: &str| logged_header(e, name);
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
