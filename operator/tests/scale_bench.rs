//! The operator at cluster scale, against a real etcd + kube-apiserver (no kubelet: pods are
//! stored objects). A benchmark, not a test: it is `#[ignore]`d and run by
//! `scripts/bench-operator.sh`, which runs it once per operator binary and size and prints the
//! figures side by side. It reports, as one `SCALE` JSON line:
//!
//! - `settle_s`: from the operator's start until every integration reports its pod counts;
//! - `rss_mib` / `peak_mib`: the operator's resident memory then, and its high-water mark;
//! - `change_ms`: how long a pod change takes to show in its integration's status (each sample);
//! - `resync_writes`: status writes during two resync periods with nothing changed;
//! - admission at scale: `CIVIC_SCALE_ADMISSIONS` (1,000) labelled pods created through the
//!   apiserver in 20 s (paced, the webhook called by the apiserver over TLS): `admission_errors`
//!   (any answer but 201 with the sidecar), `create_ms` (p50/p99 of each creation, client side)
//!   and `handler_le_ms` (share of admissions the webhook answered within 1, 2.5 and 5 ms, from
//!   its `civic_operator_admission_duration_seconds` buckets).
//!
//! Size: `CIVIC_SCALE_PODS` (50,000), `CIVIC_SCALE_NAMESPACES` (500), `CIVIC_SCALE_OPTED_IN`
//! (5,000), `CIVIC_SCALE_INTEGRATIONS` (1,000); binary: `CIVIC_SCALE_OPERATOR_BIN`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use civic_operator::crd::CivicIntegration;
use civic_testkit::process::proc_status_kib;
use civic_testkit::secrets::{CLIENT_ID, CLIENT_SECRET, PROFILE_ID};
use common::{Process, SECRET_NAME, create_namespace};
use futures_util::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// API requests in flight while the cluster is filled.
const FILL_CONCURRENCY: usize = 48;
/// Healthy integrations are reconciled this often during the run.
const RESYNC: Duration = Duration::from_secs(5);
/// Pod-change samples.
const CHANGES: usize = 5;
/// Opted-in pods are spread over this many apps, one per integration of a namespace.
const APPS_PER_NAMESPACE: usize = 2;
/// The admission phase's pace: all its pod creations within this.
const ADMISSION_WINDOW: Duration = Duration::from_secs(20);

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ns_name(i: usize) -> String {
    format!("scale-{i:04}")
}

/// A pod of about 2.3 KB as stored (a typical Deployment pod's metadata and spec).
fn pod(name: &str, app: &str, opted_in: bool) -> anyhow::Result<Pod> {
    let mut labels = json!({"app": app, "pod-template-hash": "7d9f8b6c5d"});
    if opted_in {
        labels["mcp.civic.com/inject"] = json!("enabled");
    }
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(1200)},
        },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app",
                "image": "registry.example.invalid/team/app:1.2.3",
                "args": ["--listen", ":8080", "--log-format", "json"],
                "env": [{"name": "MODE", "value": "production"}],
                "ports": [{"containerPort": 8080, "name": "http"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"memory": "256Mi"}},
            }],
        },
    }))?)
}

fn integration(ns: &str, index: usize, token_url: &str) -> Value {
    json!({
        "apiVersion": "mcp.civic.com/v1alpha1",
        "kind": "CivicIntegration",
        "metadata": {"name": format!("civic-{index}"), "namespace": ns},
        "spec": {
            "clientId": CLIENT_ID,
            "clientSecretRef": {"name": SECRET_NAME, "key": "client-secret"},
            "tokenUrl": token_url,
            "bindings": [{
                "name": "agents",
                "podSelector": {"matchLabels": {"app": format!("agent-{index}")}},
                "profileId": PROFILE_ID,
                "subject": {"serviceAccountToken": {"audience": "civic"}},
            }],
        },
    })
}

/// Runs `ops` with [`FILL_CONCURRENCY`] in flight; fails on the first error.
async fn fill<F>(ops: Vec<F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    stream::iter(ops)
        .buffer_unordered(FILL_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// `(matched, injected)` per integration `namespace/name`, from one list.
async fn counts(admin: &Client) -> anyhow::Result<HashMap<String, (i32, i32)>> {
    let list = Api::<CivicIntegration>::all(admin.clone())
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|ci| {
            let b = ci.status.as_ref()?.bindings.first()?;
            Some((
                format!("{}/{}", ci.namespace()?, ci.name_any()),
                (b.matched_pods, b.injected_pods),
            ))
        })
        .collect())
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    proc_status_kib(pid, field).with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by scripts/bench-operator.sh"]
async fn operator_at_scale() -> anyhow::Result<()> {
    let pods = size("CIVIC_SCALE_PODS", 50_000);
    let namespaces = size("CIVIC_SCALE_NAMESPACES", 500);
    let opted_in = size("CIVIC_SCALE_OPTED_IN", 5_000);
    let integrations = size("CIVIC_SCALE_INTEGRATIONS", 1_000);
    let bin = PathBuf::from(
        std::env::var("CIVIC_SCALE_OPERATOR_BIN").context("set CIVIC_SCALE_OPERATOR_BIN")?,
    );
    ensure!(
        integrations.is_multiple_of(namespaces) && integrations / namespaces <= APPS_PER_NAMESPACE
    );
    let per_ns = integrations / namespaces;

    let env = common::setup(Duration::from_secs(60), false).await?;
    let admin = env.admin.clone();
    let token_url = env.auth.token_url();
    let started = Instant::now();

    fill(
        (0..namespaces)
            .map(|i| {
                let admin = admin.clone();
                async move {
                    let ns = ns_name(i);
                    create_namespace(&admin, &ns, json!({})).await?;
                    let secret: Secret = serde_json::from_value(json!({
                        "metadata": {"name": SECRET_NAME},
                        "stringData": {"client-secret": CLIENT_SECRET},
                    }))?;
                    Api::<Secret>::namespaced(admin, &ns)
                        .create(&PostParams::default(), &secret)
                        .await?;
                    Ok(())
                }
            })
            .collect(),
    )
    .await?;
    // Pod `i` lives in namespace `i % namespaces`; the first `opted_in` opt in, alternating
    // between the namespace's integrations' apps.
    fill(
        (0..pods)
            .map(|i| {
                let admin = admin.clone();
                async move {
                    let ns = ns_name(i % namespaces);
                    let opts_in = i < opted_in;
                    let app = if opts_in {
                        format!("agent-{}", (i / namespaces) % per_ns.max(1))
                    } else {
                        "web".to_string()
                    };
                    Api::<Pod>::namespaced(admin, &ns)
                        .create(
                            &PostParams::default(),
                            &pod(&format!("pod-{i}"), &app, opts_in)?,
                        )
                        .await?;
                    Ok(())
                }
            })
            .collect(),
    )
    .await?;
    let ar = ApiResource::erase::<CivicIntegration>(&());
    fill(
        (0..integrations)
            .map(|i| {
                let (admin, ar, token_url) = (admin.clone(), ar.clone(), token_url.clone());
                async move {
                    let ns = ns_name(i % namespaces);
                    let obj: DynamicObject =
                        serde_json::from_value(integration(&ns, i / namespaces, &token_url))?;
                    Api::<DynamicObject>::namespaced_with(admin, &ns, &ar)
                        .create(&PostParams::default(), &obj)
                        .await?;
                    Ok(())
                }
            })
            .collect(),
    )
    .await?;
    let filled_s = started.elapsed().as_secs_f64();

    // Expected counts: opted-in pods of each integration's app in its namespace.
    let mut expected: HashMap<String, (i32, i32)> = HashMap::new();
    for i in 0..integrations {
        expected.insert(
            format!("{}/civic-{}", ns_name(i % namespaces), i / namespaces),
            (0, 0),
        );
    }
    for i in 0..opted_in {
        let key = format!(
            "{}/civic-{}",
            ns_name(i % namespaces),
            (i / namespaces) % per_ns.max(1)
        );
        if let Some(c) = expected.get_mut(&key) {
            c.0 += 1;
        }
    }

    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env("KUBECONFIG", &env.local_kubeconfig)
        .env("CIVIC_OPERATOR_LOG", "info")
        .env("POD_NAMESPACE", common::OPERATOR_NS)
        .env("POD_NAME", "scale")
        .env("CIVIC_OPERATOR_TOKEN_URL_CA_FILE", env.ca.ca_file())
        .envs(common::LOOPBACK_POLICY)
        .args([
            "run",
            "--admin-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-extra-san",
            "127.0.0.1",
            "--webhook-config-name",
            common::WEBHOOK_CONFIG,
            "--sidecar-image",
            "ghcr.io/civic-mcp/civic-sidecar:bench",
        ])
        .args(["--resync-interval", &format!("{}s", RESYNC.as_secs())])
        .args(["--probe-interval", "1h", "--probe-min-interval", "1ms"]);
    let op = Process::spawn("scale", cmd, "operator-scale.log")?;
    let op_started = Instant::now();

    let limit = Duration::from_secs(600);
    loop {
        ensure!(op.running(), "the operator exited:\n{}", op.output());
        ensure!(
            op_started.elapsed() < limit,
            "counts not settled in {limit:?}"
        );
        if counts(&admin).await? == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settle_s = op_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_mib = status_kib(op.pid(), "VmRSS")? as f64 / 1024.0;
    let peak_mib = status_kib(op.pid(), "VmHWM")? as f64 / 1024.0;

    // Pod changes: an opted-in pod of integration civic-0 in namespace i gets its sidecar.
    let mut change_ms = Vec::new();
    for i in 0..CHANGES.min(opted_in) {
        let ns = ns_name(i % namespaces);
        let key = format!("{ns}/civic-0");
        let before = expected[&key];
        let t = Instant::now();
        Api::<Pod>::namespaced(admin.clone(), &ns)
            .patch(
                &format!("pod-{i}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "mcp.civic.com/injected": format!("civic-0/agents")}}})),
            )
            .await?;
        let ci_api = Api::<CivicIntegration>::namespaced(admin.clone(), &ns);
        loop {
            ensure!(t.elapsed() < Duration::from_secs(60), "change {i} not seen");
            let ci = ci_api.get("civic-0").await?;
            let b = ci.status.and_then(|s| s.bindings.into_iter().next());
            if b.is_some_and(|b| b.injected_pods == before.1 + 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        change_ms.push(t.elapsed().as_millis() as u64);
    }

    // Two resync periods with nothing changing write nothing.
    let versions = |list: Vec<CivicIntegration>| -> HashMap<String, String> {
        list.into_iter()
            .map(|ci| {
                (
                    ci.name_any() + &ci.namespace().unwrap_or_default(),
                    ci.resource_version().unwrap_or_default(),
                )
            })
            .collect()
    };
    let all = Api::<CivicIntegration>::all(admin.clone());
    let before = versions(all.list(&ListParams::default()).await?.items);
    tokio::time::sleep(RESYNC * 2 + Duration::from_secs(1)).await;
    let after = versions(all.list(&ListParams::default()).await?.items);
    let resync_writes = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count();
    ensure!(op.running(), "the operator exited:\n{}", op.output());
    let rss_end_mib = status_kib(op.pid(), "VmRSS")? as f64 / 1024.0;

    let admissions = size("CIVIC_SCALE_ADMISSIONS", 1_000);
    let admitted = admission_at_scale(&admin, &op, namespaces, admissions).await?;
    op.stop();

    println!(
        "SCALE {}",
        json!({
            "binary": bin.display().to_string(),
            "pods": pods, "namespaces": namespaces, "opted_in": opted_in,
            "integrations": integrations, "fill_s": (filled_s * 10.0).round() / 10.0,
            "settle_s": (settle_s * 10.0).round() / 10.0,
            "rss_mib": rss_mib.round(), "peak_mib": peak_mib.round(),
            "rss_end_mib": rss_end_mib.round(),
            "change_ms": change_ms, "resync_writes": resync_writes,
            "admissions": admissions, "admission_errors": admitted.errors,
            "create_ms": {"p50": admitted.p50_ms, "p99": admitted.p99_ms},
            "handler_le_ms": admitted.handler_within,
        })
    );
    Ok(())
}

/// What the admission phase measured.
struct Admitted {
    errors: usize,
    p50_ms: u64,
    p99_ms: u64,
    /// Share of reviews answered within 1, 2.5 and 5 ms.
    handler_within: Value,
}

/// Points the chart's webhook configuration at `op`, then creates `count` labelled pods (app
/// `agent-0`, so integration `civic-0` of their namespace injects them) spread over the window.
async fn admission_at_scale(
    admin: &Client,
    op: &Process,
    namespaces: usize,
    count: usize,
) -> anyhow::Result<Admitted> {
    let webhook = op
        .logged_addr("webhook listening", Duration::from_secs(30))
        .await?;
    let metrics = op
        .logged_addr("admin endpoints listening", Duration::from_secs(30))
        .await?;
    common::create_empty_cert_secret(admin).await?;
    let config: MutatingWebhookConfiguration = serde_json::from_value(
        common::chart_webhook_config(&format!("https://{webhook}/mutate")),
    )?;
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &config)
        .await?;
    common::eventually("the first admission", Duration::from_secs(120), || async {
        let pod = pod("warm-up", "agent-0", true)?;
        let created = Api::<Pod>::namespaced(admin.clone(), &ns_name(0))
            .create(&PostParams::default(), &pod)
            .await;
        Ok(created.ok().filter(injected).map(|_| ()))
    })
    .await?;
    let before = handler_buckets(metrics).await?;

    let gap = ADMISSION_WINDOW / u32::try_from(count.max(1))?;
    let started = Instant::now();
    let creations = (0..count).map(|i| {
        let admin = admin.clone();
        async move {
            tokio::time::sleep_until((started + gap * u32::try_from(i)?).into()).await;
            let t = Instant::now();
            let created = Api::<Pod>::namespaced(admin, &ns_name(i % namespaces))
                .create(
                    &PostParams::default(),
                    &pod(&format!("admitted-{i}"), "agent-0", true)?,
                )
                .await;
            let ms = t.elapsed().as_millis() as u64;
            anyhow::Ok((created.ok().filter(injected).is_some(), ms))
        }
    });
    let results: Vec<(bool, u64)> = stream::iter(creations)
        .buffer_unordered(count.max(1))
        .try_collect()
        .await?;
    let took = started.elapsed();
    ensure!(
        took < ADMISSION_WINDOW * 2,
        "{count} creations took {took:?}"
    );
    let after = handler_buckets(metrics).await?;
    let mut ms: Vec<u64> = results.iter().map(|r| r.1).collect();
    ms.sort_unstable();
    let pct = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    let reviews = after.last().map_or(0.0, |b| b.1) - before.last().map_or(0.0, |b| b.1);
    let within = |le: &str| {
        let n = |v: &[(String, f64)]| v.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
        ((n(&after) - n(&before)) / reviews.max(1.0) * 1000.0).round() / 1000.0
    };
    Ok(Admitted {
        errors: results.iter().filter(|r| !r.0).count(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        handler_within: json!({"1": within("0.001"), "2.5": within("0.0025"), "5": within("0.005")}),
    })
}

fn injected(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .any(|c| c.name == "civic-sidecar")
    })
}

/// The cumulative `le` buckets of the webhook's handler histogram, `+Inf` last.
async fn handler_buckets(admin: std::net::SocketAddr) -> anyhow::Result<Vec<(String, f64)>> {
    let text = common::metrics_text(admin).await?;
    let prefix = "civic_operator_admission_duration_seconds_bucket{le=\"";
    Ok(text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.to_owned(), value.trim().parse().ok()?))
        })
        .collect())
}
