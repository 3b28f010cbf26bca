//! Operator faults against a real kube-apiserver (1.34, docs/architecture.md §6), issue 7: the
//! apiserver restarting under a running operator, expired watches (410 Gone), the operator killed
//! mid-reconcile, a frozen leader, the webhook down with `failurePolicy: Fail`, webhook
//! certificates expiring and rotating under traffic, and invalid CivicIntegrations of every kind.
//!
//! Every test runs the real `civic-operator run` process as its ServiceAccount, bound only by
//! the chart's `rbac.yaml`, against etcd + kube-apiserver on loopback and a fake Civic Auth over
//! TLS. Fails, never skips, when the kube binaries are missing: run `scripts/kube/build.sh`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use civic_operator::crd::CivicIntegration;
use civic_testkit::auth::AuthReply;
use civic_testkit::secrets::{CLIENT_SECRET, CLIENT_SECRET_WRONG};
use common::{
    CERT_SECRET, CI_NAME, Env, LEASE, OPERATOR_NS, Operator, TEAM, WEBHOOK_CONFIG, apply_all,
    create_integration, create_namespace, eventually, integration, lease_holder, put_secret,
};
use futures_util::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const EVENTUALLY: Duration = Duration::from_secs(45);
const STATUS_WRITES: &str = "civic_operator_status_writes_total";
const LEADER: &str = "civic_operator_leader";
/// Lease timing for the fail-over tests: a frozen leader is replaced in seconds.
const SHORT_LEASE: [&str; 6] = [
    "--lease-duration",
    "4s",
    "--lease-renew-deadline",
    "3s",
    "--lease-retry-period",
    "500ms",
];

/// Starts a replica named `name` (its `POD_NAME`) with this tier's flags plus `extra` (which
/// must not repeat one of them: clap refuses duplicates). Not capturing metrics at the end: these
/// tests kill and freeze replicas.
async fn start_operator(env: &Env, name: &str, extra: &[&str]) -> anyhow::Result<Operator> {
    let mut cmd = Operator::command(name, env.kubeconfig_for(extra));
    cmd.env(
        "CIVIC_OPERATOR_LOG",
        "debug,kube=info,kube_runtime::watcher=debug,hyper=info,tower=info,rustls=info,\
         hyper_util=info,reqwest=info",
    )
    .env("CIVIC_OPERATOR_TOKEN_URL_CA_FILE", env.ca.ca_file())
    .args(["--resync-interval", "1s"])
    .args(["--probe-interval", "1h", "--probe-min-interval", "200ms"])
    .args(["--backoff-base", "200ms", "--backoff-max", "2s"])
    .args(extra);
    let log = format!("operator-faults-{name}.log");
    Operator::spawn(name, cmd, &log, Duration::from_secs(20)).await
}

/// The chart's namespaced Secret mode for [`TEAM`], so that the restart test sees the Secret
/// watch relist too (the default mode has none).
async fn setup() -> anyhow::Result<Env> {
    common::setup_serving(EVENTUALLY, true, &[TEAM]).await
}

/// Waits until the integration `name` has each `(type, status, reason)`.
async fn wait_conditions(
    admin: &Client,
    name: &str,
    want: &[(&str, &str, &str)],
) -> anyhow::Result<CivicIntegration> {
    let api = Api::<CivicIntegration>::namespaced(admin.clone(), TEAM);
    eventually(&format!("{name}: {want:?}"), EVENTUALLY, || async {
        let ci = api.get(name).await?;
        let ok = want.iter().all(|(t, s, r)| {
            ci.condition(t)
                .is_some_and(|c| c.status == *s && c.reason == *r)
        });
        if ok {
            return Ok(Some(ci));
        }
        let have: Vec<_> = ci
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .map(|c| format!("{}={} {}", c.type_, c.status, c.reason))
            .collect();
        bail!("have {have:?}")
    })
    .await
}

async fn events_from(admin: &Client, instance: &str) -> anyhow::Result<Vec<Event>> {
    Ok(Api::<Event>::namespaced(admin.clone(), TEAM)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reporting_instance.as_deref() == Some(instance))
        .collect())
}

fn simple_pod(name: &str, app: &str, opted_in: bool) -> Value {
    let mut labels = json!({"app": app});
    if opted_in {
        labels["mcp.civic.com/inject"] = json!("enabled");
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "example.com/app:1"}]},
    })
}

// ---------------------------------------------------------------------------------------------
// 1. The apiserver restarts under a running operator; its watches come back expired (410).
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_and_expired_watches_are_survived() -> anyhow::Result<()> {
    let mut env = setup().await?;
    let admin = env.admin.clone();
    let token_url = env.auth.token_url();
    put_secret(&admin, CLIENT_SECRET).await?;
    create_integration(&admin, integration(CI_NAME, &token_url)).await?;
    // The webhook runs too, for its own two watches (its integration cache and the webhook
    // configuration); the chart creates its TLS Secret empty.
    common::create_empty_cert_secret(&admin).await?;
    // A long lease: the operator keeps leading through the restart, so its controller (and its
    // watches) live on and must resume rather than start afresh.
    let op = start_operator(
        &env,
        "restart",
        &[
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-config-name",
            WEBHOOK_CONFIG,
            "--sidecar-image",
            "ghcr.io/civic-mcp/civic-sidecar:test",
            "--lease-duration",
            "90s",
            "--lease-renew-deadline",
            "60s",
            "--lease-retry-period",
            "1s",
            "--secret-namespaces",
            TEAM,
        ],
    )
    .await?;
    wait_conditions(&admin, CI_NAME, &[("Ready", "True", "Ready")]).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), TEAM);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(simple_pod("agent-1", "support-agent", true))?,
    )
    .await?;
    let cis: Api<CivicIntegration> = Api::namespaced(admin.clone(), TEAM);
    let matched = |n: i32| {
        let cis = cis.clone();
        async move {
            let ci = cis.get(CI_NAME).await?;
            let b = ci.status.map(|s| s.bindings).unwrap_or_default();
            if b.len() == 1 && b[0].matched_pods == n {
                return Ok(Some(()));
            }
            bail!("bindings {b:?}")
        }
    };
    eventually("one matched pod", EVENTUALLY, || matched(1)).await?;
    // Quiet: no write is pending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = op.metric(STATUS_WRITES).await?;

    // The versions the operator's watches resume from are at most this one. Writes to a kind it
    // does not watch move etcd's revision past it; after a restart the apiserver's watch cache
    // starts at the new revision, so resuming from the old one is 410 Gone.
    let old_rv = cis
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("list resourceVersion")?;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), OPERATOR_NS);
    for i in 0..5 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("bump-{i}")}}))?;
        cms.create(&PostParams::default(), &cm).await?;
    }
    let lines_before = op.line_count();
    let down = Instant::now();
    // Down for several seconds, as in a control-plane upgrade: the watches' retries back off.
    env.cluster.stop_apiserver().await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.cluster.start_apiserver().await?;
    let back = Instant::now();
    eprintln!("apiserver down and back in {:?}", down.elapsed());
    let admin = env.cluster.admin_client().await?;
    let cis: Api<CivicIntegration> = Api::namespaced(admin.clone(), TEAM);

    // The fault is real: a watch from the old version is refused as expired.
    let expired = match cis.watch(&WatchParams::default().timeout(5), &old_rv).await {
        Err(kube::Error::Api(s)) => s.code == 410,
        Err(e) => bail!("watch from {old_rv}: {e}"),
        Ok(stream) => {
            let mut stream = stream.boxed();
            let mut gone = false;
            while let Some(ev) = stream.next().await {
                if let WatchEvent::Error(s) = ev? {
                    gone = s.code == 410;
                    break;
                }
            }
            gone
        }
    };
    ensure!(
        expired,
        "a watch from {old_rv} after the restart is 410 Gone"
    );

    // Each of the operator's three watches resumed: a Secret change, a pod and a spec change
    // each reach the status.
    put_secret(&admin, CLIENT_SECRET_WRONG).await?;
    wait_conditions(
        &admin,
        CI_NAME,
        &[
            ("CredentialsValid", "False", "InvalidClient"),
            ("Ready", "False", "InvalidClient"),
        ],
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), TEAM);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(simple_pod("agent-2", "support-agent", true))?,
    )
    .await?;
    let matched = |n: i32| {
        let cis = cis.clone();
        async move {
            let ci = cis.get(CI_NAME).await?;
            let b = ci.status.map(|s| s.bindings).unwrap_or_default();
            if b.len() == 1 && b[0].matched_pods == n {
                return Ok(Some(()));
            }
            bail!("bindings {b:?}")
        }
    };
    eventually("two matched pods after the restart", EVENTUALLY, || {
        matched(2)
    })
    .await?;
    // The pod cache is only as fresh as its watch: it must not sit out a long backoff.
    let recovered = back.elapsed();
    eprintln!("the pod watch delivered a new pod {recovered:?} after the apiserver was back");
    ensure!(
        recovered < Duration::from_secs(25),
        "pod changes reached the status only {recovered:?} after the apiserver was back"
    );
    cis.patch(
        CI_NAME,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"sidecar": {"resources": {"limits": {"cpu": "lots"}}}}})),
    )
    .await?;
    let ci = wait_conditions(&admin, CI_NAME, &[("Ready", "False", "InvalidSpec")]).await?;
    ensure!(
        ci.status.as_ref().and_then(|s| s.observed_generation) == ci.metadata.generation,
        "status describes the new generation"
    );

    // Each watch relisted on the 410 rather than failing or restarting. Not necessarily yet: the
    // status changes above can come from the reconcile's own reads, and a watch may still be in
    // its backoff (≤ 6 s) after the restarted apiserver answered 403 while its RBAC caches
    // warmed up.
    let watches = [
        "civicintegrations",
        "secrets",
        "pods",
        "webhook-civicintegrations",
        "webhook-configuration",
    ];
    eventually("every watch relisted", Duration::from_secs(15), || {
        let after = op.output_since(lines_before);
        let relisted = |watch: &str| {
            after.lines().any(|l| {
                l.contains("watch expired (410 Gone): relisting")
                    && l.contains(&format!("watch=\"{watch}\""))
            })
        };
        let pending: Vec<_> = watches.iter().filter(|w| !relisted(w)).collect();
        let outcome = if pending.is_empty() {
            Ok(Some(()))
        } else {
            Err(anyhow::anyhow!(
                "not relisted yet: {pending:?} (see {})",
                op.log_path.display()
            ))
        };
        std::future::ready(outcome)
    })
    .await?;
    let after = op.output_since(lines_before);
    ensure!(op.running(), "the operator survived the restart");
    ensure!(op.metric(LEADER).await? == 1.0, "still leading");
    ensure!(
        !after.contains("stopped leading"),
        "the restart did not cost the lease"
    );

    // No write storm: three changes, at most one write each (plus one for a probe verdict that
    // may land separately), and then quiet through several resyncs.
    let writes = op.metric(STATUS_WRITES).await? - writes_before;
    eprintln!("status writes for 3 changes across the restart: {writes}");
    ensure!(
        (3.0..=4.0).contains(&writes),
        "expected 3-4 status writes, got {writes}"
    );
    let settled = op.metric(STATUS_WRITES).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(
        op.metric(STATUS_WRITES).await? == settled,
        "no writes while nothing changes"
    );
    env.cluster.capture("faults-apiserver-restart").await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. The operator is killed mid-reconcile; 3. the leader is frozen and comes back.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_frozen_leaders_are_replaced_and_write_nothing_stale() -> anyhow::Result<()> {
    let env = setup().await?;
    let admin = &env.admin;
    let token_url = env.auth.token_url();
    put_secret(admin, CLIENT_SECRET).await?;
    create_integration(admin, integration(CI_NAME, &token_url)).await?;
    let mut flags = vec!["--webhook-enabled", "false"];
    flags.extend(SHORT_LEASE);

    // --- SIGKILL mid-reconcile: the Secret changed, the probe is in flight, nothing written.
    let first = start_operator(&env, "kill-1", &flags).await?;
    wait_conditions(admin, CI_NAME, &[("Ready", "True", "Ready")]).await?;
    let calls = env.auth.calls();
    env.auth
        .push(AuthReply::ok().delay(Duration::from_secs(30)));
    put_secret(admin, CLIENT_SECRET_WRONG).await?;
    ensure!(
        env.auth.wait_calls(calls + 1, EVENTUALLY).await,
        "the operator probes the changed Secret"
    );
    first.signal("-KILL")?;
    let killed = Instant::now();
    drop(first);
    let ci = Api::<CivicIntegration>::namespaced(admin.clone(), TEAM)
        .get(CI_NAME)
        .await?;
    ensure!(
        ci.condition("Ready").map(|c| c.status.as_str()) == Some("True"),
        "nothing was written mid-reconcile"
    );
    // A fresh replica (a new pod name, as a Deployment gives) waits out the dead one's lease and
    // converges to the right verdict.
    let second = start_operator(&env, "kill-2", &flags).await?;
    wait_conditions(
        admin,
        CI_NAME,
        &[
            ("CredentialsValid", "False", "InvalidClient"),
            ("Ready", "False", "InvalidClient"),
        ],
    )
    .await?;
    eprintln!(
        "killed mid-reconcile → right status after {:?}",
        killed.elapsed()
    );
    ensure!(lease_holder(admin).await?.as_deref() == Some("kill-2"));
    ensure!(
        events_from(admin, "kill-2")
            .await?
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidClient")),
        "the successor announced the verdict"
    );
    drop(second);

    // --- SIGSTOP: the leader freezes holding a verdict it has not written yet.
    put_secret(admin, CLIENT_SECRET).await?;
    let a = start_operator(&env, "frozen-a", &flags).await?;
    eventually("frozen-a leads", EVENTUALLY, || async {
        Ok(lease_holder(admin).await?.filter(|h| h == "frozen-a"))
    })
    .await?;
    wait_conditions(admin, CI_NAME, &[("Ready", "True", "Ready")]).await?;
    let b = start_operator(&env, "frozen-b", &flags).await?;
    eventually("frozen-b campaigns", EVENTUALLY, || async {
        Ok((b.metric(LEADER).await? == 0.0).then_some(()))
    })
    .await?;

    // a probes the wrong secret; Civic Auth answers 1 s later, while a is frozen, so on waking
    // a holds a finished, now stale, verdict ("invalid") and a status write to make.
    let calls = env.auth.calls();
    env.auth.push(AuthReply::ok().delay(Duration::from_secs(1)));
    put_secret(admin, CLIENT_SECRET_WRONG).await?;
    ensure!(
        env.auth.wait_calls(calls + 1, EVENTUALLY).await,
        "frozen-a probes the changed Secret"
    );
    a.signal("-STOP")?;
    let frozen = Instant::now();
    eventually("frozen-b takes over", EVENTUALLY, || async {
        Ok(lease_holder(admin).await?.filter(|h| h == "frozen-b"))
    })
    .await?;
    eprintln!("frozen leader replaced after {:?}", frozen.elapsed());
    wait_conditions(admin, CI_NAME, &[("Ready", "False", "InvalidClient")]).await?;
    // The Secret is fixed while a is still frozen: b makes the integration Ready.
    put_secret(admin, CLIENT_SECRET).await?;
    let ready = wait_conditions(admin, CI_NAME, &[("Ready", "True", "Ready")]).await?;
    let rv = ready.resource_version();

    // a wakes up. It must notice it no longer leads and write nothing: its stale verdict would
    // otherwise flip the integration back to InvalidClient.
    let lines_before = a.line_count();
    a.signal("-CONT")?;
    eventually("frozen-a steps down", EVENTUALLY, || async {
        Ok((a.metric(LEADER).await? == 0.0).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = Api::<CivicIntegration>::namespaced(admin.clone(), TEAM)
        .get(CI_NAME)
        .await?;
    ensure!(
        now.condition("Ready").map(|c| c.reason.as_str()) == Some("Ready"),
        "a woken ex-leader overwrote the status: {:?}",
        now.condition("Ready")
    );
    ensure!(
        now.resource_version() == rv,
        "nothing at all was written to the integration after the wake-up"
    );
    ensure!(
        a.running(),
        "frozen-a is up:\n{}",
        a.output_since(lines_before)
    );
    ensure!(lease_holder(admin).await?.as_deref() == Some("frozen-b"));
    ensure!(b.metric(LEADER).await? == 1.0);
    let stale: Vec<_> = events_from(admin, "frozen-a")
        .await?
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("InvalidClient"))
        .collect();
    ensure!(
        stale.is_empty(),
        "frozen-a announced a stale verdict: {stale:?}"
    );

    // --- The Lease taken away (an admin, or a replica with a bad clock, writes another holder):
    // the leader steps down at its next renewal; the intruder never renews, so a replica takes
    // the lease back once it has looked unchanged for a lease duration.
    let leases = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NS);
    let mut lease = leases.get(LEASE).await?;
    let spec = lease.spec.as_mut().context("lease spec")?;
    spec.holder_identity = Some("intruder".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    leases
        .replace(LEASE, &PostParams::default(), &lease)
        .await?;
    let taken = Instant::now();
    eventually("frozen-b steps down", EVENTUALLY, || async {
        Ok((b.metric(LEADER).await? == 0.0).then_some(()))
    })
    .await?;
    let stepped_down = taken.elapsed();
    let back = eventually("a replica takes the lease back", EVENTUALLY, || async {
        Ok(lease_holder(admin).await?.filter(|h| h != "intruder"))
    })
    .await?;
    let retaken = taken.elapsed();
    eprintln!(
        "lease taken: leader stepped down after {stepped_down:?}; {back} took it back after {retaken:?}"
    );
    ensure!(
        stepped_down < Duration::from_secs(3),
        "the leader noticed at its next renewal: {stepped_down:?}"
    );
    ensure!(
        retaken >= Duration::from_millis(3500),
        "nobody takes a freshly renewed lease before it expires: {retaken:?}"
    );
    env.cluster.capture("faults-leaders").await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Webhook certificates expire and rotate under traffic; 5. the webhook is down.
// ---------------------------------------------------------------------------------------------

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn secret_key(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_certificates_rotate_under_traffic_and_a_dead_webhook_fails_closed()
-> anyhow::Result<()> {
    let mut env = setup().await?;
    let admin = &env.admin;
    let token_url = env.auth.token_url();
    put_secret(admin, CLIENT_SECRET).await?;
    create_integration(admin, integration(CI_NAME, &token_url)).await?;
    create_namespace(
        admin,
        "opted-out",
        json!({"mcp.civic.com/inject": "disabled"}),
    )
    .await?;
    // The chart creates the TLS Secret empty; the operator only reads and updates it.
    common::create_empty_cert_secret(admin).await?;
    let cert_secrets: Api<Secret> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let addr_flag = addr.to_string();
    // Serving certificates live 9 s (renewed with 3 s left), the CA 30 s (a new one staged with
    // 10 s left): within ~30 s of traffic the serving certificate is replaced several times and
    // the CA once, and any certificate that was not replaced in time expires under the traffic.
    let mut flags = vec![
        "--webhook-addr",
        addr_flag.as_str(),
        "--webhook-extra-san",
        "127.0.0.1",
        "--webhook-config-name",
        WEBHOOK_CONFIG,
        "--webhook-ca-validity",
        "30s",
        "--webhook-cert-validity",
        "9s",
        "--webhook-cert-check-interval",
        "1s",
        "--sidecar-image",
        "ghcr.io/civic-mcp/civic-sidecar:test",
    ];
    flags.extend(SHORT_LEASE);
    let op = start_operator(&env, "webhook-1", &flags).await?;
    apply_all(
        admin,
        vec![common::chart_webhook_config(&format!(
            "https://{addr}/inject"
        ))],
    )
    .await?;
    common::wait_ca_bundle_filled(admin, EVENTUALLY).await?;
    wait_conditions(admin, CI_NAME, &[("Ready", "True", "Ready")]).await?;

    // Traffic: opted-in pods (must be injected) and plain pods, every 200 ms, until the serving
    // certificate was replaced at least three times and the CA at least once.
    let mut serving_seen = BTreeSet::new();
    let mut signers_seen = BTreeSet::new();
    let (mut admitted, mut plain, mut refused) = (0, 0, Vec::new());
    let started = Instant::now();
    let mut i = 0;
    while serving_seen.len() < 4 || signers_seen.len() < 2 {
        ensure!(
            started.elapsed() < Duration::from_secs(75),
            "rotation did not happen in time: {} serving certificates, {} CAs seen",
            serving_seen.len(),
            signers_seen.len()
        );
        let s = cert_secrets.get(CERT_SECRET).await?;
        serving_seen.insert(secret_key(&s, "tls.crt"));
        signers_seen.insert(secret_key(&s, "signer.crt"));
        i += 1;
        let (status, body) = common::create_pod(
            admin,
            TEAM,
            &simple_pod(&format!("traffic-{i}"), "support-agent", true),
        )
        .await?;
        if status == 201 && common::is_injected(&body) {
            admitted += 1;
        } else {
            refused.push(format!("{status}: {}", body["message"]));
        }
        if i % 4 == 0 {
            let (status, body) =
                common::create_pod(admin, TEAM, &simple_pod(&format!("plain-{i}"), "x", false))
                    .await?;
            ensure!(
                status == 201 && !common::is_injected(&body),
                "plain pod: {status}"
            );
            plain += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{admitted} opted-in pods injected and {plain} plain pods admitted in {:?} through {} \
         serving certificates and {} CAs; refused: {}",
        started.elapsed(),
        serving_seen.len(),
        signers_seen.len(),
        refused.len()
    );
    ensure!(
        refused.is_empty(),
        "pods refused during rotation: {refused:?}"
    );

    // --- The webhook frozen: connections are accepted but never answered. Refused within the
    // webhook's timeout, with the apiserver's message naming the webhook; other pods pass.
    op.signal("-STOP")?;
    let t = Instant::now();
    let (status, body) = common::create_pod(
        admin,
        TEAM,
        &simple_pod("while-frozen", "support-agent", true),
    )
    .await?;
    let took = t.elapsed();
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    eprintln!("frozen webhook: HTTP {status} after {took:?}: {message}");
    ensure!(status >= 500, "refused: {status} {message}");
    ensure!(
        message.contains("failed calling webhook \"inject.mcp.civic.com\""),
        "{message}"
    );
    ensure!(
        took < Duration::from_secs(15),
        "bounded by the timeout: {took:?}"
    );
    let (status, _) =
        common::create_pod(admin, TEAM, &simple_pod("plain-frozen", "x", false)).await?;
    ensure!(
        status == 201,
        "pods without the opt-in label are unaffected"
    );

    // --- The webhook dead (SIGKILL): connection refused, fail closed.
    op.signal("-KILL")?;
    drop(op);
    let (status, body) = common::create_pod(
        admin,
        TEAM,
        &simple_pod("while-down", "support-agent", true),
    )
    .await?;
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    eprintln!("dead webhook: HTTP {status}: {message}");
    ensure!(status >= 500, "refused: {status} {message}");
    ensure!(
        message.contains("failed calling webhook \"inject.mcp.civic.com\"")
            && message.contains("connection refused"),
        "{message}"
    );
    ensure!(
        Api::<Pod>::namespaced(admin.clone(), TEAM)
            .get_opt("while-down")
            .await?
            .is_none(),
        "no pod without its sidecar"
    );
    let (status, _) =
        common::create_pod(admin, TEAM, &simple_pod("plain-down", "x", false)).await?;
    ensure!(
        status == 201,
        "unlabelled pods are admitted while the webhook is down"
    );
    let (status, _) = common::create_pod(
        admin,
        "opted-out",
        &simple_pod("labelled-opted-out", "support-agent", true),
    )
    .await?;
    ensure!(
        status == 201,
        "a namespace labelled mcp.civic.com/inject=disabled is never sent to the webhook"
    );

    // --- Down past the serving certificate's expiry: a new replica replaces the expired
    // certificate before it admits anything, and admission resumes.
    let stored = cert_secrets.get(CERT_SECRET).await?;
    let expired_pem = secret_key(&stored, "tls.crt");
    let not_after = civic_operator::certs::issue::not_after(&expired_pem)?;
    if let Ok(left) = not_after.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_secs(1)).await;
    }
    let restarted = Instant::now();
    let op = start_operator(&env, "webhook-2", &flags).await?;
    let first = eventually("admission resumes", EVENTUALLY, || async {
        let name = format!("after-restart-{}", restarted.elapsed().as_millis());
        let (status, body) =
            common::create_pod(admin, TEAM, &simple_pod(&name, "support-agent", true)).await?;
        Ok((status == 201 && common::is_injected(&body)).then_some(()))
    })
    .await;
    first?;
    eprintln!(
        "expired certificate replaced; admission resumed {:?} after the restart",
        restarted.elapsed()
    );
    let renewed = secret_key(&cert_secrets.get(CERT_SECRET).await?, "tls.crt");
    ensure!(
        renewed != expired_pem,
        "the expired certificate was replaced"
    );
    ensure!(
        civic_operator::certs::issue::not_after(&renewed)? > SystemTime::now(),
        "by a valid one"
    );

    // --- Started while the apiserver is unreachable (as after a node reboot): it waits for the
    // apiserver instead of exiting into CrashLoopBackOff, then serves.
    drop(op);
    env.cluster.stop_apiserver().await?;
    let op = start_operator(&env, "webhook-3", &flags).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        op.running(),
        "the operator exited while the apiserver was down:\n{}",
        op.output()
    );
    env.cluster.start_apiserver().await?;
    let back = Instant::now();
    let admin = env.cluster.admin_client().await?;
    eventually(
        "admission after the apiserver is back",
        EVENTUALLY,
        || async {
            let name = format!("after-outage-{}", back.elapsed().as_millis());
            let (status, body) =
                common::create_pod(&admin, TEAM, &simple_pod(&name, "support-agent", true)).await?;
            Ok((status == 201 && common::is_injected(&body)).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "started during an apiserver outage; admitting {:?} after the apiserver was back",
        back.elapsed()
    );
    drop(op);
    env.cluster.capture("faults-webhook-certs").await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Invalid CivicIntegrations of every kind.
// ---------------------------------------------------------------------------------------------

type Mutation = Box<dyn Fn(&mut Value)>;

fn set(pointer: &'static str, value: Value) -> Mutation {
    Box::new(move |v: &mut Value| {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer with a parent");
        let target = v.pointer_mut(parent).expect("the parent exists");
        target[key] = value.clone();
    })
}

fn remove(pointer: &'static str) -> Mutation {
    Box::new(move |v: &mut Value| {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer with a parent");
        if let Some(obj) = v.pointer_mut(parent).and_then(Value::as_object_mut) {
            obj.remove(key);
        }
    })
}

/// What the schema rejects (HTTP 422), and the field its message must name. The nine shapes
/// `apiserver.rs` checks (non-UUID profile, two or no subject sources, remote plain-http token
/// URL, empty client ID, empty Secret name, non-DNS binding name, short projected token,
/// duplicate binding names) are not repeated here.
fn schema_cases() -> Vec<(&'static str, &'static str, Mutation)> {
    vec![
        ("clientId missing", "clientId", remove("/spec/clientId")),
        (
            "clientId over 256 characters",
            "clientId",
            set("/spec/clientId", json!("a".repeat(257))),
        ),
        (
            "clientId not a string",
            "clientId",
            set("/spec/clientId", json!(42)),
        ),
        (
            "clientSecretRef missing",
            "clientSecretRef",
            remove("/spec/clientSecretRef"),
        ),
        (
            "clientSecretRef.key empty",
            "clientSecretRef.key",
            set("/spec/clientSecretRef/key", json!("")),
        ),
        (
            "clientSecretRef.name over 253 characters",
            "clientSecretRef.name",
            set("/spec/clientSecretRef/name", json!("a".repeat(254))),
        ),
        (
            "hubUrl plain http to a remote host",
            "hubUrl",
            set("/spec/hubUrl", json!("http://app.civic.com/hub/mcp")),
        ),
        (
            "hubUrl with another scheme",
            "hubUrl",
            set("/spec/hubUrl", json!("ftp://app.civic.com/hub/mcp")),
        ),
        (
            "hubUrl carrying credentials",
            "hubUrl",
            set(
                "/spec/hubUrl",
                json!("https://user:pw@app.civic.com/hub/mcp"),
            ),
        ),
        (
            "tokenUrl not a URL",
            "tokenUrl",
            set("/spec/tokenUrl", json!("auth.civic.com/oauth/token")),
        ),
        (
            "tokenUrl over 2048 characters",
            "tokenUrl",
            set(
                "/spec/tokenUrl",
                json!(format!("https://auth.civic.com/{}", "a".repeat(2048))),
            ),
        ),
        (
            "bindings not a list",
            "bindings",
            set("/spec/bindings", json!({"name": "support"})),
        ),
        (
            "binding name missing",
            "name",
            remove("/spec/bindings/0/name"),
        ),
        (
            "binding name over 63 characters",
            "name",
            set("/spec/bindings/0/name", json!("a".repeat(64))),
        ),
        (
            "podSelector missing",
            "podSelector",
            remove("/spec/bindings/0/podSelector"),
        ),
        (
            "matchExpressions entry without an operator",
            "operator",
            set(
                "/spec/bindings/0/podSelector/matchExpressions",
                json!([{"key": "app"}]),
            ),
        ),
        (
            "profileId missing",
            "profileId",
            remove("/spec/bindings/0/profileId"),
        ),
        (
            "lockProfile not a boolean",
            "lockProfile",
            set("/spec/bindings/0/lockProfile", json!("yes")),
        ),
        (
            "subject missing",
            "subject",
            remove("/spec/bindings/0/subject"),
        ),
        (
            "all three subject sources",
            "subject",
            set(
                "/spec/bindings/0/subject",
                json!({"serviceAccountToken": {"audience": "civic"},
                       "requestHeader": {"name": "Authorization"},
                       "civicTokenSecretRef": {"name": "t", "key": "token"}}),
            ),
        ),
        (
            "serviceAccountToken.audience empty",
            "audience",
            set(
                "/spec/bindings/0/subject/serviceAccountToken/audience",
                json!(""),
            ),
        ),
        (
            "serviceAccountToken.expirationSeconds above 2^32",
            "expirationSeconds",
            set(
                "/spec/bindings/0/subject/serviceAccountToken/expirationSeconds",
                json!(4_294_967_297_i64),
            ),
        ),
        (
            "serviceAccountToken.expirationSeconds not an integer",
            "expirationSeconds",
            set(
                "/spec/bindings/0/subject/serviceAccountToken/expirationSeconds",
                json!(3600.5),
            ),
        ),
        (
            "requestHeader.name not a header name",
            "name",
            set(
                "/spec/bindings/0/subject",
                json!({"requestHeader": {"name": "X User Token"}}),
            ),
        ),
        (
            "civicTokenSecretRef.name empty",
            "name",
            set(
                "/spec/bindings/0/subject",
                json!({"civicTokenSecretRef": {"name": "", "key": "token"}}),
            ),
        ),
        (
            "civicTokenSecretRef.key missing",
            "key",
            set(
                "/spec/bindings/0/subject",
                json!({"civicTokenSecretRef": {"name": "t"}}),
            ),
        ),
        (
            "subjectTokenType empty",
            "subjectTokenType",
            set("/spec/bindings/0/subjectTokenType", json!("")),
        ),
        (
            "tokenTtlSeconds zero",
            "tokenTtlSeconds",
            set("/spec/bindings/0/tokenTtlSeconds", json!(0)),
        ),
        (
            "tokenTtlSeconds negative",
            "tokenTtlSeconds",
            set("/spec/bindings/0/tokenTtlSeconds", json!(-5)),
        ),
        (
            "tokenTtlSeconds a string",
            "tokenTtlSeconds",
            set("/spec/bindings/0/tokenTtlSeconds", json!("3600")),
        ),
        (
            "scope over 1024 characters",
            "scope",
            set("/spec/bindings/0/scope", json!("s".repeat(1025))),
        ),
        (
            "sidecar.image empty",
            "image",
            set("/spec/sidecar", json!({"image": ""})),
        ),
        // CEL rules of the CRD (x-kubernetes-validations).
        (
            "clientId with a colon",
            "clientId",
            set("/spec/clientId", json!("team:agents")),
        ),
        (
            "clientId blank",
            "clientId",
            set("/spec/clientId", json!("   ")),
        ),
        (
            "clientId with a control character",
            "clientId",
            set("/spec/clientId", json!("client\u{7}id")),
        ),
        (
            "serviceAccountToken.audience blank",
            "serviceAccountToken.audience",
            set(
                "/spec/bindings/0/subject/serviceAccountToken/audience",
                json!("  "),
            ),
        ),
        (
            "requestHeader Host",
            "requestHeader.name",
            set(
                "/spec/bindings/0/subject",
                json!({"requestHeader": {"name": "Host"}}),
            ),
        ),
        (
            "requestHeader Mcp-Session-Id",
            "requestHeader.name",
            set(
                "/spec/bindings/0/subject",
                json!({"requestHeader": {"name": "Mcp-Session-Id"}}),
            ),
        ),
        (
            "civicTokenSecretRef with exchange parameters",
            "have no effect with subject.civicTokenSecretRef",
            Box::new(|v: &mut Value| {
                v["spec"]["bindings"][0]["subject"] =
                    json!({"civicTokenSecretRef": {"name": "t", "key": "token"}});
                v["spec"]["bindings"][0]["tokenTtlSeconds"] = json!(600);
            }),
        ),
        (
            "subjectTokenType blank",
            "subjectTokenType",
            set("/spec/bindings/0/subjectTokenType", json!("  ")),
        ),
        (
            "scope with a control character",
            "scope",
            set("/spec/bindings/0/scope", json!("read\nwrite")),
        ),
        (
            "sidecar image with whitespace",
            "sidecar.image",
            set("/spec/sidecar", json!({"image": "ghcr.io/civic sidecar"})),
        ),
        (
            "named profile called default",
            "reserved for the binding's profileId",
            set(
                "/spec/bindings/0/profiles",
                json!([{"name": "default", "profileId": "5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11"}]),
            ),
        ),
        (
            "named profile with an upper-case name",
            "profiles[0].name",
            set(
                "/spec/bindings/0/profiles",
                json!([{"name": "Sales", "profileId": "5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11"}]),
            ),
        ),
        (
            "named profile without a UUID",
            "profiles[0].profileId",
            set(
                "/spec/bindings/0/profiles",
                json!([{"name": "sales", "profileId": "sales"}]),
            ),
        ),
        (
            "two named profiles with one name",
            "profiles[1]",
            set(
                "/spec/bindings/0/profiles",
                json!([
                    {"name": "sales", "profileId": "5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11"},
                    {"name": "sales", "profileId": "c1f0e9d8-2b3a-4c5d-8e7f-a0b1c2d3e4f5"}
                ]),
            ),
        ),
        (
            "nine named profiles",
            "profiles",
            set(
                "/spec/bindings/0/profiles",
                Value::Array(
                    (0..9)
                        .map(|i| json!({"name": format!("p{i}"), "profileId": "5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11"}))
                        .collect(),
                ),
            ),
        ),
        (
            "named profiles with a static Civic token",
            "profiles need an exchange",
            Box::new(|v: &mut Value| {
                v["spec"]["bindings"][0]["subject"] =
                    json!({"civicTokenSecretRef": {"name": "t", "key": "token"}});
                v["spec"]["bindings"][0]["profiles"] =
                    json!([{"name": "sales", "profileId": "5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11"}]);
            }),
        ),
    ]
}

/// What the schema lets through but the operator reports as `Ready=False InvalidSpec`, and the
/// field path the condition's message must name.
fn status_cases() -> Vec<(&'static str, &'static str, Mutation)> {
    vec![
        (
            "Secret name not a DNS subdomain",
            "spec.clientSecretRef.name",
            set("/spec/clientSecretRef/name", json!("Civic_Credentials")),
        ),
        (
            "Secret key with a slash",
            "spec.clientSecretRef.key",
            set("/spec/clientSecretRef/key", json!("a/b")),
        ),
        (
            "hubUrl with a fragment",
            "spec.hubUrl",
            set("/spec/hubUrl", json!("https://app.civic.com/hub/mcp#x")),
        ),
        (
            "tokenUrl with a bad port",
            "spec.tokenUrl",
            set(
                "/spec/tokenUrl",
                json!("https://auth.civic.com:99999/oauth/token"),
            ),
        ),
        (
            "podSelector label key invalid",
            "spec.bindings[support].podSelector.matchLabels",
            set(
                "/spec/bindings/0/podSelector",
                json!({"matchLabels": {"-bad-": "x"}}),
            ),
        ),
        (
            "podSelector label value invalid",
            "spec.bindings[support].podSelector.matchLabels",
            set(
                "/spec/bindings/0/podSelector",
                json!({"matchLabels": {"app": "has space"}}),
            ),
        ),
        (
            "podSelector unknown operator",
            "spec.bindings[support].podSelector.matchExpressions[0]",
            set(
                "/spec/bindings/0/podSelector",
                json!({"matchExpressions": [{"key": "app", "operator": "Like", "values": ["a"]}]}),
            ),
        ),
        (
            "podSelector In without values",
            "spec.bindings[support].podSelector.matchExpressions[0]",
            set(
                "/spec/bindings/0/podSelector",
                json!({"matchExpressions": [{"key": "app", "operator": "In"}]}),
            ),
        ),
        (
            "podSelector Exists with values",
            "spec.bindings[support].podSelector.matchExpressions[0]",
            set(
                "/spec/bindings/0/podSelector",
                json!({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["a"]}]}),
            ),
        ),
        (
            "civicTokenSecretRef key invalid",
            "spec.bindings[support].subject.civicTokenSecretRef.key",
            set(
                "/spec/bindings/0/subject",
                json!({"civicTokenSecretRef": {"name": "t", "key": "../token"}}),
            ),
        ),
        (
            "sidecar resources not a quantity",
            "spec.sidecar.resources.limits.cpu",
            set(
                "/spec/sidecar",
                json!({"resources": {"limits": {"cpu": "lots"}}}),
            ),
        ),
        (
            "sidecar resources negative",
            "spec.sidecar.resources.requests.memory",
            set(
                "/spec/sidecar",
                json!({"resources": {"requests": {"memory": "-64Mi"}}}),
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_integrations_are_rejected_by_the_schema_or_reported() -> anyhow::Result<()> {
    let env = setup().await?;
    let admin = &env.admin;
    let token_url = env.auth.token_url();
    put_secret(admin, CLIENT_SECRET).await?;

    let mut schema_rejected = 0;
    for (what, field, mutate) in schema_cases() {
        let mut body = integration("bad", &token_url);
        mutate(&mut body);
        match create_integration(admin, body).await {
            Err(kube::Error::Api(s)) => {
                ensure!(
                    s.code == 422 && s.message.contains(field),
                    "{what}: expected a 422 naming {field}, got {} {}",
                    s.code,
                    s.message
                );
                schema_rejected += 1;
            }
            Err(e) => bail!("{what}: {e}"),
            Ok(_) => bail!("the schema accepted an integration with {what}"),
        }
    }
    // Unknown fields are pruned (structural schema), not stored: a typo is visible on read.
    let mut body = integration("typo", &token_url);
    body["spec"]["bindings"][0]["profileID"] = json!("x");
    create_integration(admin, body).await?;
    let stored = Api::<DynamicObject>::namespaced_with(
        admin.clone(),
        TEAM,
        &ApiResource::erase::<CivicIntegration>(&()),
    )
    .get("typo")
    .await?;
    ensure!(
        stored.data["spec"]["bindings"][0]
            .get("profileID")
            .is_none(),
        "unknown fields are pruned"
    );

    // What only the operator can judge: each one its own integration, all reported at once.
    let cases = status_cases();
    for (i, (_, _, mutate)) in cases.iter().enumerate() {
        let mut body = integration(&format!("invalid-{i}"), &token_url);
        mutate(&mut body);
        create_integration(admin, body)
            .await
            .with_context(|| format!("the schema must accept case {i} ({})", cases[i].0))?;
    }
    let op = start_operator(&env, "validation", &["--webhook-enabled", "false"]).await?;
    let api = Api::<CivicIntegration>::namespaced(admin.clone(), TEAM);
    for (i, (what, path, _)) in cases.iter().enumerate() {
        let ci = wait_conditions(
            admin,
            &format!("invalid-{i}"),
            &[("Ready", "False", "InvalidSpec")],
        )
        .await
        .with_context(|| what.to_string())?;
        let message = ci
            .condition("Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ensure!(
            message.contains(path),
            "{what}: the message must name {path}: {message}"
        );
    }
    // The typo'd one is valid once pruned; invalid specs make no credential probe.
    wait_conditions(admin, "typo", &[("Ready", "True", "Ready")]).await?;
    ensure!(
        env.auth.calls() == 1,
        "only the valid integration was probed, once: {} calls",
        env.auth.calls()
    );
    let all = api.list(&ListParams::default()).await?.items.len();
    eprintln!(
        "{schema_rejected} shapes rejected by the schema, {} reported as InvalidSpec, {all} \
         integrations stored",
        cases.len()
    );
    drop(op);
    env.cluster.capture("faults-invalid-integrations").await?;
    Ok(())
}
