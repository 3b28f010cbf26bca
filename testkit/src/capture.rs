//! Puts what a test produced besides process output into `target/civic-test-logs/`, so the
//! suite-wide secret scan (`tests/scan_logs.sh`) sees it too: a process's `/metrics` at the end
//! of a test, and a cluster's Events, CivicIntegration statuses and Pods (checking on the way that
//! no container but the sidecar mounts a client secret).
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
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
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
    let pods_json: Vec<Value> = pods
        .items
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let integrations: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l.get("civicIntegration"))
        .collect();
    let bad = client_secret_mounted_outside_sidecar(&pods_json, &integrations);
    if !bad.is_empty() {
        bail!("the client secret is mounted outside the sidecar: {bad:?}");
    }
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

/// The injected sidecar's container name (`civic_operator::inject::SIDECAR_CONTAINER`).
pub const SIDECAR_CONTAINER: &str = "civic-sidecar";

/// `namespace/pod/container` of every container other than the sidecar that mounts a volume
/// holding the client secret of a CivicIntegration in the pod's namespace.
pub fn client_secret_mounted_outside_sidecar(
    pods: &[Value],
    integrations: &[&Value],
) -> Vec<String> {
    let mut bad = Vec::new();
    for pod in pods {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let secrets: Vec<&str> = integrations
            .iter()
            .filter(|ci| ci["metadata"]["namespace"] == ns)
            .filter_map(|ci| ci["spec"]["clientSecretRef"]["name"].as_str())
            .collect();
        let spec = &pod["spec"];
        // Volumes carrying one of those Secrets, directly or in a projected volume.
        let holds_secret = |v: &Value| {
            let direct = v["secret"]["secretName"].as_str();
            let projected = v["projected"]["sources"].as_array().into_iter().flatten();
            direct
                .into_iter()
                .chain(projected.filter_map(|s| s["secret"]["name"].as_str()))
                .any(|name| secrets.contains(&name))
        };
        let volumes: Vec<&str> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| holds_secret(v))
            .filter_map(|v| v["name"].as_str())
            .collect();
        for kind in ["containers", "initContainers", "ephemeralContainers"] {
            for c in spec[kind].as_array().into_iter().flatten() {
                if c["name"] == SIDECAR_CONTAINER {
                    continue;
                }
                let mounts = c["volumeMounts"].as_array().into_iter().flatten();
                if mounts
                    .filter_map(|m| m["name"].as_str())
                    .any(|n| volumes.contains(&n))
                {
                    bad.push(format!(
                        "{ns}/{}/{}",
                        pod["metadata"]["name"].as_str().unwrap_or_default(),
                        c["name"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    bad
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
                let mut req = Vec::new();
                let mut buf = [0u8; 512];
                while !req.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "the request head ends with a blank line");
                    req.extend_from_slice(&buf[..n]);
                }
                assert!(String::from_utf8_lossy(&req).starts_with("GET /metrics HTTP/1.0\r\n"));
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
    fn finds_a_client_secret_mounted_outside_the_sidecar() {
        let ci = json!({"metadata": {"namespace": "team"},
                        "spec": {"clientSecretRef": {"name": "creds", "key": "k"}}});
        let pod = |agent_mounts: Value| {
            json!({"metadata": {"namespace": "team", "name": "p"}, "spec": {
                "volumes": [
                    {"name": "civic-client-secret", "secret": {"secretName": "creds"}},
                    {"name": "other", "projected": {"sources": [{"secret": {"name": "creds"}}]}},
                    {"name": "cfg", "configMap": {"name": "x"}},
                ],
                "containers": [
                    {"name": "agent", "volumeMounts": agent_mounts},
                    {"name": SIDECAR_CONTAINER, "volumeMounts": [{"name": "civic-client-secret"}]},
                ],
            }})
        };
        let ok = pod(json!([{"name": "cfg"}]));
        assert!(client_secret_mounted_outside_sidecar(&[ok], &[&ci]).is_empty());
        for leaked in ["civic-client-secret", "other"] {
            let bad = pod(json!([{"name": leaked}]));
            assert_eq!(
                client_secret_mounted_outside_sidecar(&[bad], &[&ci]),
                ["team/p/agent"]
            );
        }
        // Another namespace's integration does not make the Secret a client secret here.
        let elsewhere = json!({"metadata": {"namespace": "other"},
                               "spec": {"clientSecretRef": {"name": "creds"}}});
        let bad = pod(json!([{"name": "civic-client-secret"}]));
        assert!(client_secret_mounted_outside_sidecar(&[bad], &[&elsewhere]).is_empty());
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
