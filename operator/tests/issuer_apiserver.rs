//! `civic-operator issuer` against a real kube-apiserver (1.34, docs/architecture.md §6): the
//! real binary with an admin kubeconfig reads the discovery document and JWKS through the
//! apiserver, the CivicIntegrations and the pods. The test apiserver's issuer is
//! `https://kubernetes.default.svc.cluster.local` and its JWKS URI its own loopback address, so
//! the command must say the issuer cannot work (exit status 1) and why, while still printing the
//! values. Fails, never skips, when the kube binaries are missing: run `scripts/kube/build.sh`.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use civic_testkit::apiserver::{ADMIN_USER, KubeApiServer, SERVICE_ACCOUNT_ISSUER};
use common::{TEAM, create_integration, create_namespace, install_crd};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use serde_json::{Value, json};

/// Registered with no role: may read neither discovery nor CivicIntegrations.
const NOBODY: &str = "nobody";

async fn issuer(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<common::CliRun> {
    common::run_cli(kubeconfig, "issuer", args).await
}

#[tokio::test]
async fn issuer_reports_the_test_clusters_internal_issuer() -> anyhow::Result<()> {
    let cluster = KubeApiServer::builder()
        .user(NOBODY, &[])
        .start()
        .await
        .context("starting etcd + kube-apiserver (build them with scripts/kube/build.sh)")?;
    let admin = cluster.admin_client().await?;
    create_namespace(&admin, TEAM, json!({})).await?;
    install_crd(&admin, Duration::from_secs(30)).await?;

    // One integration: a service-account binding with a running pod, one without, and a
    // per-user binding.
    let mut ci = common::integration(common::CI_NAME, "https://auth.civic.com/oauth/token");
    let bindings = ci["spec"]["bindings"].as_array_mut().context("bindings")?;
    bindings.push(json!({
        "name": "idle",
        "podSelector": {"matchLabels": {"app": "nobody-runs-this"}},
        "profileId": civic_testkit::secrets::PROFILE_ID,
        "subject": {"serviceAccountToken": {"audience": "civic-idle"}},
    }));
    bindings.push(json!({
        "name": "per-user",
        "podSelector": {"matchLabels": {"app": "web"}},
        "profileId": civic_testkit::secrets::PROFILE_ID,
        "subject": {"requestHeader": {"name": "Authorization"}},
    }));
    create_integration(&admin, ci).await?;
    common::create_in::<ServiceAccount>(&admin, TEAM, json!({"metadata": {"name": "agent"}}))
        .await?;
    // No webhook here: the command selects opted-in pods as the webhook would.
    common::create_in::<Pod>(
        &admin,
        TEAM,
        json!({
            "metadata": {"name": "support-agent-0", "labels": {
                "app": "support-agent", "mcp.civic.com/inject": "enabled"}},
            "spec": {"serviceAccountName": "agent",
                     "containers": [{"name": "agent", "image": "busybox"}]},
        }),
    )
    .await?;
    // Same selector, not opted in: the webhook never sees it, so it does not count.
    common::create_in::<Pod>(
        &admin,
        TEAM,
        json!({
            "metadata": {"name": "support-agent-plain", "labels": {"app": "support-agent"}},
            "spec": {"containers": [{"name": "agent", "image": "busybox"}]},
        }),
    )
    .await?;

    let kubeconfig = cluster.write_kubeconfig(ADMIN_USER)?;
    let token = cluster.token_for(ADMIN_USER)?;

    // Text.
    let run = issuer(&kubeconfig, &[]).await?;
    ensure!(run.code == Some(1), "exit status {:?}", run.code);
    let out = &run.stdout;
    let jwks_uri = format!("{}/openid/v1/jwks", cluster.url());
    for want in [
        format!("Issuer URL:      {SERVICE_ACCOUNT_ISSUER}"),
        format!("JWKS URI:        {jwks_uri}"),
        "Signing keys:    ".to_owned(),
        "team/civic/support\n    Audience:      civic\n    Subject (sub): system:serviceaccount:team:agent\n"
            .to_owned(),
        "team/civic/idle\n    Audience:      civic-idle\n    Subject (sub): system:serviceaccount:team:<service-account-name>  (no pod runs yet: the pattern)"
            .to_owned(),
        "team/civic/per-user: per-user (subject from request header Authorization): Civic Auth must trust the external identity provider"
            .to_owned(),
        "error [issuer_cluster_internal]: the issuer host kubernetes.default.svc.cluster.local is cluster-internal"
            .to_owned(),
        "error [jwks_not_public]".to_owned(),
        "The issuer cannot work for Civic Auth as it is".to_owned(),
    ] {
        ensure!(out.contains(&want), "{want:?} not in:\n{out}");
    }
    ensure!(
        !out.contains("system:serviceaccount:team:default"),
        "the pod that is not opted in was counted:\n{out}"
    );
    ensure!(!out.contains(&token) && !run.stderr.contains(&token));

    // JSON, one namespace.
    let run = issuer(&kubeconfig, &["-o", "json", "--namespace", TEAM]).await?;
    ensure!(run.code == Some(1), "exit status {:?}", run.code);
    let v: Value = serde_json::from_str(&run.stdout).context("JSON output")?;
    ensure!(v["issuer"] == SERVICE_ACCOUNT_ISSUER, "{v}");
    ensure!(v["jwksUri"] == jwks_uri.as_str(), "{v}");
    ensure!(
        v["discoveryUrl"]
            == format!("{SERVICE_ACCOUNT_ISSUER}/.well-known/openid-configuration").as_str(),
        "{v}"
    );
    ensure!(v["usable"] == false, "{v}");
    ensure!(v["keys"].as_array().is_some_and(|k| !k.is_empty()), "{v}");
    let support = v["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["binding"] == "support")
        .context("the support binding")?;
    ensure!(
        *support
            == json!({"namespace": TEAM, "integration": "civic", "binding": "support",
                      "subject": "serviceAccountToken", "audience": "civic",
                      "subjects": ["system:serviceaccount:team:agent"], "pattern": false}),
        "{support}"
    );
    let codes: Vec<&str> = v["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["severity"] == "error")
        .filter_map(|w| w["code"].as_str())
        .collect();
    ensure!(
        codes == ["issuer_cluster_internal", "jwks_not_public"],
        "{codes:?}"
    );

    // A namespace without integrations: the issuer alone.
    let run = issuer(&kubeconfig, &["-n", "default"]).await?;
    ensure!(run.code == Some(1), "exit status {:?}", run.code);
    ensure!(
        run.stdout
            .contains("No binding exchanges a service-account token"),
        "{}",
        run.stdout
    );

    // A user who may read nothing: discovery refused, said with what to do.
    let nobody = cluster.write_kubeconfig(NOBODY)?;
    let run = issuer(&nobody, &[]).await?;
    ensure!(run.code == Some(1), "exit status {:?}", run.code);
    for want in [
        "Issuer URL:      (unknown: see below)",
        "error [discovery_unreadable]",
        "system:service-account-issuer-discovery",
        "Bindings: unknown (see below).",
        "warning [integrations_unreadable]: listing CivicIntegrations failed (HTTP 403: ",
        "pass --namespace",
    ] {
        ensure!(
            run.stdout.contains(want),
            "{want:?} not in:\n{}",
            run.stdout
        );
    }

    // Usage errors, and no cluster to ask: 2.
    let run = issuer(&kubeconfig, &["-o", "yaml"]).await?;
    ensure!(run.code == Some(2), "exit status {:?}", run.code);
    let run = issuer(&cluster.dir().join("no-such-kubeconfig"), &[]).await?;
    ensure!(run.code == Some(2), "exit status {:?}", run.code);
    ensure!(run.stderr.contains("kubeconfig"), "{}", run.stderr);
    Ok(())
}
