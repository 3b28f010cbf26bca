//! The real-apiserver tier (docs/architecture.md §6): etcd + kube-apiserver 1.34 on loopback, the
//! CRD from `crds/`, the chart's `rbac.yaml`, a fake Civic Auth over TLS, and the real
//! `civic-operator run` process authenticated as its ServiceAccount (bound only by `rbac.yaml`,
//! never admin). Fails, never skips, when the kube binaries are missing: run
//! `scripts/kube/build.sh`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use civic_operator::crd::CivicIntegration;
use civic_testkit::apiserver::KubeApiServer;
use civic_testkit::secrets::{CLIENT_SECRET, CLIENT_SECRET_WRONG};
use common::{
    CI_NAME, Env, OPERATOR_NS, Operator, SA_NAME, SECRET_NAME, TEAM, create_integration,
    eventually, lease_holder, put_secret,
};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const EVENTUALLY: Duration = Duration::from_secs(30);
/// Short lease timing so fail-over is quick.
const LEASE_DURATION: Duration = Duration::from_secs(4);
/// Healthy integrations are reconciled this often in these tests.
const RESYNC: Duration = Duration::from_secs(1);

/// The controller alone, as the chart's controller Deployment runs it (the webhook has its own
/// tiers), with `extra` flags; its final metrics join the secret scan.
async fn start_operator_with(
    name: &str,
    kubeconfig: &Path,
    ca_file: &Path,
    extra: &[&str],
) -> anyhow::Result<Operator> {
    let mut cmd = Operator::command(name, kubeconfig);
    cmd.env(
        "CIVIC_OPERATOR_LOG",
        "debug,kube=info,hyper=info,tower=info,rustls=info,hyper_util=info,reqwest=info",
    )
    .env("CIVIC_OPERATOR_TOKEN_URL_CA_FILE", ca_file)
    .args(["--webhook-enabled", "false"])
    .args(["--lease-duration", "4s", "--lease-renew-deadline", "3s"])
    .args(["--lease-retry-period", "500ms"])
    .args(["--probe-interval", "1h", "--probe-min-interval", "200ms"])
    .args(["--backoff-base", "200ms", "--backoff-max", "2s"])
    .args(extra);
    let log = format!("operator-{name}.log");
    Ok(Operator::spawn(name, cmd, &log, Duration::from_secs(15))
        .await?
        .capturing_metrics())
}

/// [`start_operator_with`] a 1 s resync.
async fn start_operator(name: &str, kubeconfig: &Path, ca_file: &Path) -> anyhow::Result<Operator> {
    start_operator_with(name, kubeconfig, ca_file, &["--resync-interval", "1s"]).await
}

async fn setup() -> anyhow::Result<Env> {
    common::setup(EVENTUALLY, false).await
}

fn integration(token_url: &str) -> Value {
    common::integration(CI_NAME, token_url)
}

/// Waits until the integration's one binding reports `matched` and `injected` pods.
async fn wait_binding_counts(
    admin: &Client,
    what: &str,
    matched: i32,
    injected: i32,
) -> anyhow::Result<()> {
    eventually(what, EVENTUALLY, || async {
        let ci = Api::<CivicIntegration>::namespaced(admin.clone(), TEAM)
            .get(CI_NAME)
            .await?;
        let b = ci.status.map(|s| s.bindings).unwrap_or_default();
        Ok(
            (b.len() == 1 && b[0].matched_pods == matched && b[0].injected_pods == injected)
                .then_some(()),
        )
    })
    .await
}

/// `(status, reason)` of every condition of the integration.
async fn conditions(admin: &Client) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let ci = Api::<CivicIntegration>::namespaced(admin.clone(), TEAM)
        .get(CI_NAME)
        .await?;
    Ok(ci
        .status
        .map(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, (c.status, c.reason)))
        .collect())
}

/// Waits until each `(type, status, reason)` holds.
async fn wait_conditions(admin: &Client, want: &[(&str, &str, &str)]) -> anyhow::Result<()> {
    let what = format!("conditions {want:?}");
    eventually(&what, EVENTUALLY, || async {
        let have = conditions(admin).await?;
        let ok = want
            .iter()
            .all(|(t, s, r)| have.get(*t).is_some_and(|(hs, hr)| hs == s && hr == r));
        if ok {
            Ok(Some(()))
        } else {
            bail!("have {have:?}")
        }
    })
    .await
}

/// The server-side Table for `kubectl get civic -n team`: column name → cell of our row.
async fn printed_table(admin: &Client) -> anyhow::Result<BTreeMap<String, String>> {
    let req = http::Request::get(format!(
        "/apis/mcp.civic.com/v1alpha1/namespaces/{TEAM}/civicintegrations"
    ))
    .header(
        "accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .body(Vec::new())?;
    let table: Value = admin.request(req).await?;
    let names: Vec<String> = table["columnDefinitions"]
        .as_array()
        .context("columnDefinitions")?
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let cells = table["rows"][0]["cells"].as_array().context("a row")?;
    Ok(names
        .into_iter()
        .zip(cells)
        .map(|(n, c)| (n, c.as_str().map_or_else(|| c.to_string(), str::to_owned)))
        .collect())
}

async fn events(admin: &Client) -> anyhow::Result<Vec<Event>> {
    Ok(Api::<Event>::namespaced(admin.clone(), TEAM)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(CI_NAME))
        .collect())
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Turns a valid integration body into an invalid one.
type Mutation = Box<dyn Fn(&mut Value)>;

/// What the schema alone rejects, before any operator sees it.
async fn schema_rejects_invalid_integrations(
    admin: &Client,
    token_url: &str,
) -> anyhow::Result<()> {
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "profileId is not a UUID",
            Box::new(|v| v["spec"]["bindings"][0]["profileId"] = json!("not-a-uuid")),
        ),
        (
            "two subject sources",
            Box::new(|v| {
                v["spec"]["bindings"][0]["subject"]["requestHeader"] =
                    json!({"name": "Authorization"})
            }),
        ),
        (
            "no subject source",
            Box::new(|v| v["spec"]["bindings"][0]["subject"] = json!({})),
        ),
        (
            "plain http to a remote token URL",
            Box::new(|v| v["spec"]["tokenUrl"] = json!("http://auth.civic.com/oauth/token")),
        ),
        (
            "empty client ID",
            Box::new(|v| v["spec"]["clientId"] = json!("")),
        ),
        (
            "empty Secret name",
            Box::new(|v| v["spec"]["clientSecretRef"]["name"] = json!("")),
        ),
        (
            "binding name not a DNS label",
            Box::new(|v| v["spec"]["bindings"][0]["name"] = json!("Support_Agents")),
        ),
        (
            "projected token shorter than 600 s",
            Box::new(|v| {
                v["spec"]["bindings"][0]["subject"]["serviceAccountToken"]["expirationSeconds"] =
                    json!(300)
            }),
        ),
        (
            "duplicate binding names",
            Box::new(|v| {
                let b = v["spec"]["bindings"][0].clone();
                v["spec"]["bindings"].as_array_mut().unwrap().push(b);
            }),
        ),
    ];
    for (what, mutate) in cases {
        let mut body = integration(token_url);
        mutate(&mut body);
        let err = create_integration(admin, body)
            .await
            .err()
            .with_context(|| format!("the schema accepted an integration with {what}"))?;
        anyhow::ensure!(code(&err) == Some(422), "{what}: expected 422, got {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_lifecycle_under_the_chart_rbac() -> anyhow::Result<()> {
    let env = setup().await?;
    let admin = &env.admin;
    let token_url = env.auth.token_url();
    anyhow::ensure!(token_url.starts_with("https://"), "{token_url}");

    schema_rejects_invalid_integrations(admin, &token_url).await?;

    let op = start_operator("lifecycle", &env.kubeconfig, env.ca.ca_file()).await?;
    eventually("operator ready", EVENTUALLY, || async {
        Ok((op.get("/readyz").await?.0 == 200).then_some(()))
    })
    .await?;
    assert_eq!(op.get("/livez").await?.0, 200);

    // Missing Secret.
    create_integration(admin, integration(&token_url)).await?;
    wait_conditions(
        admin,
        &[
            ("SecretResolved", "False", "SecretNotFound"),
            ("Ready", "False", "SecretNotFound"),
            ("CredentialsValid", "Unknown", "NotChecked"),
        ],
    )
    .await?;
    assert_eq!(env.auth.calls(), 0, "no probe without a secret");

    // Creating the Secret (with a wrong secret) flips SecretResolved at once (Secret watch,
    // well before the 1 h probe interval), and Civic Auth's invalid_client is a verdict.
    let created = Instant::now();
    put_secret(admin, CLIENT_SECRET_WRONG).await?;
    wait_conditions(
        admin,
        &[
            ("SecretResolved", "True", "SecretFound"),
            ("CredentialsValid", "False", "InvalidClient"),
            ("Ready", "False", "InvalidClient"),
        ],
    )
    .await?;
    eprintln!("Secret created → verdict in {:?}", created.elapsed());

    // Rotating to the right secret is re-probed at once: Ready.
    put_secret(admin, CLIENT_SECRET).await?;
    wait_conditions(
        admin,
        &[
            ("SecretResolved", "True", "SecretFound"),
            ("CredentialsValid", "True", "CredentialsAccepted"),
            ("Ready", "True", "Ready"),
        ],
    )
    .await?;
    let probe = env
        .auth
        .requests()
        .last()
        .cloned()
        .context("a probe request")?;
    assert_eq!(
        probe
            .header("authorization")
            .map(|h| h.starts_with("Basic ")),
        Some(true)
    );

    // Pod counts: one opted-in matching pod carrying this binding's sidecar, one matching pod
    // without it, one pod another binding would take, one matching pod that did not opt in (the
    // operator's label-selected watch never sees it).
    Api::<ServiceAccount>::namespaced(admin.clone(), TEAM)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}}))?,
        )
        .await?;
    for (name, app, injected, opted_in) in [
        ("agent-1", "support-agent", Some("civic/support"), true),
        ("agent-2", "support-agent", None, true),
        ("other-1", "other", None, true),
        ("plain-1", "support-agent", None, false),
    ] {
        let mut annotations = serde_json::Map::new();
        if let Some(v) = injected {
            annotations.insert(
                civic_operator::annotations::INJECTED_ANNOTATION.into(),
                json!(v),
            );
        }
        let inject = if opted_in { "enabled" } else { "disabled" };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name,
                         "labels": {"app": app,
                                    "mcp.civic.com/inject": inject},
                         "annotations": annotations},
            "spec": {"automountServiceAccountToken": false,
                     "containers": [{"name": "app", "image": "example.invalid/app:1"}]},
        }))?;
        Api::<Pod>::namespaced(admin.clone(), TEAM)
            .create(&PostParams::default(), &pod)
            .await?;
    }
    wait_binding_counts(admin, "pod counts", 2, 1).await?;
    let unserved = format!(
        "civic_operator_opted_in_pods_without_sidecar{{integration=\"{CI_NAME}\",integration_namespace=\"{TEAM}\"}}"
    );
    let ready = format!(
        "civic_operator_integration_ready{{integration=\"{CI_NAME}\",integration_namespace=\"{TEAM}\"}}"
    );
    assert_eq!(op.metric(&unserved).await?, 1.0, "agent-2 runs without");
    assert_eq!(op.metric(&ready).await?, 1.0);

    // A pod that terminates leaves the counts: it drops out of the watch's live-phase field
    // selector, which the apiserver reports as a deletion.
    Api::<Pod>::namespaced(admin.clone(), TEAM)
        .patch_status(
            "agent-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;
    wait_binding_counts(admin, "pod counts after a pod terminated", 1, 1).await?;
    assert_eq!(op.metric(&unserved).await?, 0.0);

    // `kubectl get civic` columns, as the apiserver renders them (a server-side Table).
    let table = printed_table(admin).await?;
    assert_eq!(
        table.get("Ready").map(String::as_str),
        Some("True"),
        "{table:?}"
    );
    assert_eq!(
        table.get("Bindings").map(String::as_str),
        Some("support"),
        "{table:?}"
    );
    assert!(table.contains_key("Age"), "{table:?}");

    // A no-op resync writes nothing: several resync periods pass, reconciles happen, and the
    // object's resourceVersion stays the same.
    let api = Api::<CivicIntegration>::namespaced(admin.clone(), TEAM);
    let before = api.get(CI_NAME).await?;
    let reconciles_before = op
        .metric("civic_operator_reconciles_total{result=\"success\"}")
        .await?;
    let writes_before = op.metric("civic_operator_status_writes_total").await?;
    let probes_before = env.auth.calls();
    tokio::time::sleep(RESYNC * 4).await;
    let after = api.get(CI_NAME).await?;
    let reconciles_after = op
        .metric("civic_operator_reconciles_total{result=\"success\"}")
        .await?;
    assert!(
        reconciles_after >= reconciles_before + 2.0,
        "resyncs reconciled ({reconciles_before} → {reconciles_after})"
    );
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "a no-op resync must not write"
    );
    assert_eq!(
        op.metric("civic_operator_status_writes_total").await?,
        writes_before
    );
    assert_eq!(
        env.auth.calls(),
        probes_before,
        "a fresh verdict is not re-probed"
    );
    // The conditions' own bookkeeping is right.
    let status = after.status.clone().context("status")?;
    assert_eq!(status.observed_generation, after.metadata.generation);
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == after.metadata.generation)
    );
    let managers: Vec<_> = after
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.subresource.as_deref() == Some("status")
                || m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.to_string().contains("f:status"))
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().all(|m| m == "civic-operator"),
        "{managers:?}"
    );

    // Events: one per condition change, from the operator.
    let evs = events(admin).await?;
    let reasons: Vec<&str> = evs.iter().filter_map(|e| e.reason.as_deref()).collect();
    for r in [
        "SecretNotFound",
        "SecretFound",
        "InvalidClient",
        "CredentialsAccepted",
        "Ready",
    ] {
        assert!(reasons.contains(&r), "no {r} Event in {reasons:?}");
    }
    assert!(
        evs.iter()
            .all(|e| e.reporting_instance.as_deref() == Some("lifecycle"))
    );
    assert!(evs.iter().any(|e| e.type_.as_deref() == Some("Warning")));
    assert!(evs.iter().any(|e| e.type_.as_deref() == Some("Normal")));

    // The CRD's CEL rules refuse what the structural schema cannot say, with their message.
    for (patch, message) in [
        (
            json!({"spec": {"clientId": "has:colon"}}),
            "must not contain ':'",
        ),
        (
            json!({"spec": {"bindings": [{
                "name": "static", "podSelector": {}, "profileId": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                "subject": {"civicTokenSecretRef": {"name": "t", "key": "token"}},
                "scope": "read",
            }]}}),
            "have no effect with subject.civicTokenSecretRef",
        ),
        (
            json!({"spec": {"bindings": [{
                "name": "user", "podSelector": {}, "profileId": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                "subject": {"requestHeader": {"name": "Mcp-Session-Id"}},
            }]}}),
            "cannot carry a subject token",
        ),
    ] {
        let err = api
            .patch(CI_NAME, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("a CEL rule refuses the patch");
        assert_eq!(code(&err), Some(422), "{err}");
        assert!(err.to_string().contains(message), "{message}: {err}");
    }

    // What CEL cannot check (a quantity) is reported in status: InvalidSpec until a change.
    let patch = json!({"spec": {"sidecar": {"resources": {"limits": {"cpu": "lots"}}}}});
    api.patch(CI_NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_conditions(admin, &[("Ready", "False", "InvalidSpec")]).await?;

    // The operator's token can do what rbac.yaml grants and nothing more.
    let sa = env
        .cluster
        .client_for(&KubeApiServer::service_account_user(OPERATOR_NS, SA_NAME))
        .await?;
    let err = Api::<CivicIntegration>::namespaced(sa.clone(), TEAM)
        .patch(
            CI_NAME,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"clientId": "x"}})),
        )
        .await
        .expect_err("the operator must not write specs");
    assert_eq!(code(&err), Some(403), "{err}");
    let err = Api::<Secret>::namespaced(sa, TEAM)
        .delete(SECRET_NAME, &Default::default())
        .await
        .expect_err("the operator must not delete Secrets");
    assert_eq!(code(&err), Some(403), "{err}");

    assert!(!op.output().contains(CLIENT_SECRET));
    env.cluster.capture("operator-lifecycle").await?;
    Ok(())
}

/// The status code of a failed API call, `None` when it succeeded.
async fn refused<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Option<u16> {
    call.await.err().and_then(|e| code(&e))
}

/// Rotating the client secret (wrong, then right) is noticed without any resync: the status
/// goes `InvalidClient`, then `Ready`. Returns how long the rotation took to show.
async fn rotation_is_noticed(admin: &Client) -> anyhow::Result<Duration> {
    put_secret(admin, CLIENT_SECRET_WRONG).await?;
    wait_conditions(admin, &[("CredentialsValid", "False", "InvalidClient")]).await?;
    let rotated = Instant::now();
    put_secret(admin, CLIENT_SECRET).await?;
    wait_conditions(admin, &[("Ready", "True", "Ready")]).await?;
    Ok(rotated.elapsed())
}

/// The chart's default Secret access: `get` by name in every namespace, never `list` or `watch`
/// (either would hand over every Secret of the cluster); a rotation is noticed by the
/// controller's recheck, with no resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_secret_access_is_get_only_and_rotation_is_rechecked() -> anyhow::Result<()> {
    let env = setup().await?;
    let admin = &env.admin;
    put_secret(admin, CLIENT_SECRET_WRONG).await?;
    let sa = env
        .cluster
        .client_for(&KubeApiServer::service_account_user(OPERATOR_NS, SA_NAME))
        .await?;
    let team: Api<Secret> = Api::namespaced(sa.clone(), TEAM);
    anyhow::ensure!(
        team.get(SECRET_NAME).await.is_ok(),
        "get by name is granted"
    );
    let lp = ListParams::default();
    assert_eq!(
        refused(team.list(&lp)).await,
        Some(403),
        "list in a namespace"
    );
    assert_eq!(
        refused(Api::<Secret>::all(sa.clone()).list(&lp)).await,
        Some(403),
        "list all"
    );
    let wp = kube::api::WatchParams::default();
    assert_eq!(refused(team.watch(&wp, "0")).await, Some(403), "watch");
    assert_eq!(
        refused(Api::<Secret>::all(sa).list_metadata(&lp)).await,
        Some(403),
        "metadata list"
    );

    create_integration(admin, integration(&env.auth.token_url())).await?;
    let _op = start_operator_with(
        "recheck",
        &env.kubeconfig,
        env.ca.ca_file(),
        &["--resync-interval", "1h", "--secret-recheck-interval", "1s"],
    )
    .await?;
    let took = rotation_is_noticed(admin).await?;
    eprintln!("cluster-wide mode: rotation noticed in {took:?} (recheck 1 s)");
    Ok(())
}

/// The chart's namespaced Secret mode (`controller.secretNamespaces: [team]`): Secrets of the
/// served namespace are watched, so a rotation shows at once; every other namespace's Secrets,
/// the operator's own among them, are out of reach, and an integration there says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_secret_access_watches_served_namespaces_only() -> anyhow::Result<()> {
    const OTHER: &str = "team-b";
    let env = common::setup_serving(EVENTUALLY, false, &[TEAM]).await?;
    let admin = &env.admin;
    common::create_namespace(admin, OTHER, json!({})).await?;
    let sa = env
        .cluster
        .client_for(&KubeApiServer::service_account_user(OPERATOR_NS, SA_NAME))
        .await?;
    let lp = ListParams::default();
    anyhow::ensure!(
        Api::<Secret>::namespaced(sa.clone(), TEAM)
            .list(&lp)
            .await
            .is_ok(),
        "list in the served namespace"
    );
    for ns in [OTHER, OPERATOR_NS] {
        let api = Api::<Secret>::namespaced(sa.clone(), ns);
        assert_eq!(refused(api.get("anything")).await, Some(403), "get in {ns}");
        assert_eq!(refused(api.list(&lp)).await, Some(403), "list in {ns}");
    }
    assert_eq!(
        refused(Api::<Secret>::all(sa).list(&lp)).await,
        Some(403),
        "list all"
    );

    create_integration(admin, integration(&env.auth.token_url())).await?;
    let mut elsewhere = integration(&env.auth.token_url());
    elsewhere["metadata"]["namespace"] = json!(OTHER);
    common::apply_all(admin, vec![elsewhere]).await?;
    let _op = start_operator_with(
        "namespaced",
        &env.kubeconfig,
        env.ca.ca_file(),
        &["--resync-interval", "1h", "--secret-namespaces", TEAM],
    )
    .await?;
    let took = rotation_is_noticed(admin).await?;
    eprintln!("namespaced mode: rotation noticed in {took:?} (watch)");

    let other = Api::<CivicIntegration>::namespaced(admin.clone(), OTHER);
    let ready = eventually(
        "SecretForbidden in the unserved namespace",
        EVENTUALLY,
        || async {
            let ci = other.get(CI_NAME).await?;
            Ok(ci
                .status
                .and_then(|s| {
                    s.conditions
                        .into_iter()
                        .find(|c| c.type_ == "SecretResolved")
                })
                .filter(|c| c.reason == "SecretForbidden"))
        },
    )
    .await?;
    anyhow::ensure!(
        ready.message.contains("controller.secretNamespaces") && ready.message.contains(OTHER),
        "the message names the chart value and the namespace: {}",
        ready.message
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_elect_one_leader_and_fail_over() -> anyhow::Result<()> {
    let env = setup().await?;
    let admin = &env.admin;
    let token_url = env.auth.token_url();
    put_secret(admin, CLIENT_SECRET_WRONG).await?;
    create_integration(admin, integration(&token_url)).await?;

    let a = start_operator("op-a", &env.kubeconfig, env.ca.ca_file()).await?;
    let first = eventually("a leader", EVENTUALLY, || async {
        lease_holder(admin).await
    })
    .await?;
    assert_eq!(first, "op-a");
    let b = start_operator("op-b", &env.kubeconfig, env.ca.ca_file()).await?;
    wait_conditions(admin, &[("CredentialsValid", "False", "InvalidClient")]).await?;

    // Both replicas are ready; exactly one leads and only it reconciles, over several renewals.
    eventually("b ready", EVENTUALLY, || async {
        Ok((b.get("/readyz").await?.0 == 200).then_some(()))
    })
    .await?;
    tokio::time::sleep(LEASE_DURATION + Duration::from_secs(1)).await;
    assert_eq!(lease_holder(admin).await?.as_deref(), Some("op-a"));
    assert_eq!(a.metric("civic_operator_leader").await?, 1.0);
    assert_eq!(b.metric("civic_operator_leader").await?, 0.0);
    assert!(
        a.metric("civic_operator_reconciles_total{result=\"success\"}")
            .await?
            > 0.0
    );
    assert_eq!(
        b.metric("civic_operator_reconciles_total{result=\"success\"}")
            .await?,
        0.0
    );
    assert_eq!(
        b.metric("civic_operator_reconciles_total{result=\"error\"}")
            .await?,
        0.0
    );

    // The leader dies without releasing: b takes over once the lease expires.
    let killed = Instant::now();
    a.signal("-KILL")?;
    drop(a);
    let next = eventually("fail-over", EVENTUALLY, || async {
        Ok(lease_holder(admin).await?.filter(|h| h == "op-b"))
    })
    .await?;
    let took = killed.elapsed();
    eprintln!("fail-over to {next} after {took:?}");
    assert!(
        took >= LEASE_DURATION - Duration::from_millis(500),
        "took over too early: {took:?}"
    );
    assert!(took < LEASE_DURATION * 4, "took over too late: {took:?}");
    eventually("b leads", EVENTUALLY, || async {
        Ok((b.metric("civic_operator_leader").await? == 1.0).then_some(()))
    })
    .await?;

    // The new leader reconciles: a fixed Secret makes the integration Ready, announced by op-b.
    put_secret(admin, CLIENT_SECRET).await?;
    wait_conditions(admin, &[("Ready", "True", "Ready")]).await?;
    let evs = events(admin).await?;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("CredentialsAccepted")
                && e.reporting_instance.as_deref() == Some("op-b")),
        "no CredentialsAccepted Event from op-b"
    );

    // A graceful stop releases the lease, so a successor need not wait for expiry.
    b.signal("-TERM")?;
    assert!(
        b.wait_exit(Duration::from_secs(10)).await?,
        "op-b exits cleanly on SIGTERM"
    );
    assert_eq!(lease_holder(admin).await?, None, "released on shutdown");
    let c = start_operator("op-c", &env.kubeconfig, env.ca.ca_file()).await?;
    let started = Instant::now();
    eventually("op-c leads", EVENTUALLY, || async {
        Ok(lease_holder(admin).await?.filter(|h| h == "op-c"))
    })
    .await?;
    assert!(
        started.elapsed() < LEASE_DURATION,
        "a released lease is taken at once, not after expiry ({:?})",
        started.elapsed()
    );
    drop(c);
    env.cluster.capture("operator-failover").await?;
    Ok(())
}
