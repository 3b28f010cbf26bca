//! Puts what a test produced besides process output into `target/civic-test-logs/`, so the
//! suite-wide secret scan (`tests/scan_logs.sh`) sees it too: a process's `/metrics` at the end
//! of a test, and a cluster's Events, CivicIntegration statuses and Pods.
//!
//! Each dump is also checked at once against [`crate::secrets`], so a leak fails the test that
//! caused it, not only the scan at the end of the suite.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::{Value, json};

use crate::fs::test_logs_dir;
use crate::secrets;

/// One plain HTTP/1.0 GET with short timeouts, without an async runtime (usable from `Drop`).
/// The body, when the answer is a 200.
pub fn http_get_blocking(addr: SocketAddr, path: &str) -> Option<String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.take(16 << 20).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}

/// Appends `text` under a `label` line to `target/civic-test-logs/<file>`.
pub fn append_to_log(file: &str, label: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = test_logs_dir().join(file);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "# ---- {label}")?;
    f.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        writeln!(f)?;
    }
    Ok(path)
}

/// Fails (naming the secret kinds, never the values) if `text` holds a known secret.
fn check(text: &str, what: &str) -> anyhow::Result<()> {
    let leaks = secrets::find_leaks(text, &secrets::known_secrets());
    if !leaks.is_empty() {
        bail!("secrets in {what}: {leaks:?}");
    }
    Ok(())
}

/// The CivicIntegration resource, without depending on the operator crate.
fn civic_integrations() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("mcp.civic.com", "v1alpha1", "CivicIntegration"),
        "civicintegrations",
    )
}

/// Writes every Event (`events.k8s.io/v1` and core `v1`), every CivicIntegration (spec and
/// status) and every Pod of the cluster, as one JSON document per line, to
/// `target/civic-test-logs/cluster-<label>.jsonl`, and fails if any of it holds a known secret.
/// Use an admin client; call it at the end of a test, before the cluster is dropped.
pub async fn dump_cluster_state(client: &kube::Client, label: &str) -> anyhow::Result<PathBuf> {
    let lp = ListParams::default();
    let mut lines = Vec::new();
    let events = Api::<Event>::all(client.clone()).list(&lp).await?;
    lines.extend(events.items.iter().map(|e| json!({"event": e})));
    let core = Api::<CoreEvent>::all(client.clone()).list(&lp).await?;
    lines.extend(core.items.iter().map(|e| json!({"coreEvent": e})));
    // The CRD may not be installed in every cluster a test starts.
    if let Ok(list) = Api::<DynamicObject>::all_with(client.clone(), &civic_integrations())
        .list(&lp)
        .await
    {
        lines.extend(list.items.iter().map(|ci| {
            json!({"civicIntegration": {
                "metadata": {"namespace": ci.metadata.namespace, "name": ci.metadata.name,
                             "generation": ci.metadata.generation},
                "spec": ci.data.get("spec"),
                "status": ci.data.get("status"),
            }})
        }));
    }
    let pods = Api::<Pod>::all(client.clone()).list(&lp).await?;
    lines.extend(pods.items.iter().map(|p| json!({"pod": p})));
    let text: String = lines
        .iter()
        .map(|v: &Value| format!("{v}\n"))
        .collect::<String>();
    let file = format!("cluster-{label}.jsonl");
    let path = test_logs_dir().join(&file);
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    check(&text, &format!("the cluster state ({})", path.display()))?;
    Ok(path)
}

/// Scrapes `http://<addr>/metrics` and appends it to `target/civic-test-logs/<file>`, failing
/// if it holds a known secret. Returns the metrics text (empty when the endpoint did not answer).
pub fn capture_metrics(addr: SocketAddr, file: &str, label: &str) -> anyhow::Result<String> {
    let Some(text) = http_get_blocking(addr, "/metrics") else {
        return Ok(String::new());
    };
    append_to_log(file, &format!("/metrics of {label}"), &text)?;
    check(&text, &format!("the /metrics of {label}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_get_reads_a_200_body_and_ignores_other_statuses() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 200 OK\r\n\r\nhello 1\n",
                "HTTP/1.1 404 Nope\r\n\r\nx",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 512];
                let n = s.read(&mut req).unwrap();
                assert!(String::from_utf8_lossy(&req[..n]).starts_with("GET /metrics HTTP/1.0"));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert_eq!(
            http_get_blocking(addr, "/metrics").as_deref(),
            Some("hello 1\n")
        );
        assert_eq!(http_get_blocking(addr, "/metrics"), None);
        server.join().unwrap();
    }

    #[test]
    fn a_dump_with_a_known_secret_fails_without_naming_it() {
        let err = check(&format!("x {} y", secrets::CLIENT_SECRET), "a test dump")
            .unwrap_err()
            .to_string();
        assert!(err.contains("secrets in a test dump"), "{err}");
        assert!(!err.contains(secrets::CLIENT_SECRET), "{err}");
        check("nothing to see", "a clean dump").unwrap();
    }
}
