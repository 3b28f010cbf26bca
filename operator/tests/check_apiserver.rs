//! `civic-operator check` against a real kube-apiserver (1.34): the real binary with an admin
//! kubeconfig, the operator running outside the cluster as in `webhook_apiserver.rs` (the chart's
//! RBAC, a loopback webhook, the chart's webhook configuration pointing at it by URL). No
//! kubelet here: pods are stored objects, and the chart's Deployments are absent at first, hence
//! `--operator-outside`; later they are created with the status a kubelet would give them. One
//! healthy run (exit status 0), then each problem the command must find: a pod opted in after admission (the webhook never saw it), a sidecar that is not ready,
//! an integration that is not Ready, a caBundle of the wrong CA and a stopped webhook (exit 1),
//! and usage or connection errors (exit 2). Fails, never skips, when the kube binaries are
//! missing: run `scripts/kube/build.sh`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use civic_operator::crd::CivicIntegration;
use civic_testkit::apiserver::ADMIN_USER;
use civic_testkit::secrets::CLIENT_SECRET;
use common::{
    CI_NAME, OPERATOR_NS, Process, TEAM, WEBHOOK_CONFIG, apply_all, create_integration,
    eventually_slowly as eventually, integration, put_secret,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const EVENTUALLY: Duration = Duration::from_secs(60);

async fn check(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<common::CliRun> {
    common::run_cli(kubeconfig, "check", args).await
}

fn has(out: &str, wants: &[&str]) -> anyhow::Result<()> {
    for want in wants {
        ensure!(out.contains(want), "{want:?} not in:\n{out}");
    }
    Ok(())
}

fn owner(kind: &str, name: &str, uid: &str) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_then_finds_each_problem() -> anyhow::Result<()> {
    let env = common::setup(EVENTUALLY, true).await?;
    let admin = env.admin.clone();
    common::create_empty_cert_secret(&admin).await?;
    put_secret(&admin, CLIENT_SECRET).await?;
    create_integration(&admin, integration(CI_NAME, &env.auth.token_url())).await?;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_civic-operator"));
    cmd.env_clear()
        .env("KUBECONFIG", &env.local_kubeconfig)
        .env("POD_NAMESPACE", OPERATOR_NS)
        .env("POD_NAME", "civic-operator-0")
        .env("CIVIC_OPERATOR_TOKEN_URL_CA_FILE", env.ca.ca_file())
        .envs(common::LOOPBACK_POLICY)
        .args(["run", "--admin-addr", "127.0.0.1:0"])
        .args(common::LOOPBACK_WEBHOOK)
        .args(["--lease-duration", "4s", "--lease-renew-deadline", "3s"])
        .args(["--lease-retry-period", "500ms", "--resync-interval", "2s"])
        .args(["--probe-min-interval", "200ms"]);
    let operator = Process::spawn("civic-operator-0", cmd, "check-operator.log")?;
    let addr = operator
        .logged_addr("webhook listening", Duration::from_secs(30))
        .await?;
    apply_all(
        &admin,
        vec![common::chart_webhook_config(&format!(
            "https://{addr}/inject"
        ))],
    )
    .await?;
    common::wait_ca_bundle_filled(&admin, EVENTUALLY).await?;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let integrations: Api<CivicIntegration> = Api::namespaced(admin.clone(), TEAM);
    let ready = |name: &'static str, want: &'static str| {
        let integrations = integrations.clone();
        async move {
            eventually(&format!("{name} Ready={want}"), EVENTUALLY, || async {
                let ci = integrations.get(name).await?;
                Ok(ci
                    .condition("Ready")
                    .is_some_and(|c| c.status == want)
                    .then_some(()))
            })
            .await
        }
    };
    ready(CI_NAME, "True").await?;
    eventually("a leader", EVENTUALLY, || async {
        common::lease_holder(&admin).await
    })
    .await?;
    let kubeconfig = env.cluster.write_kubeconfig(ADMIN_USER)?;
    let token = env.cluster.token_for(ADMIN_USER)?;

    // Healthy: every check passes; the missing Deployments are only a warning.
    let run = check(&kubeconfig, &["--operator-outside"]).await?;
    ensure!(run.code == Some(0), "exit status {:?}", run.code);
    has(
        &run.stdout,
        &[
            "civic-operator check (operator namespace civic-system)",
            "[ok  ] crd            civicintegrations.mcp.civic.com is Established and serves v1alpha1 with this binary's schema",
            "[warn] operator       no controller Deployment",
            "[ok  ] leader         civic-operator-0 leads (Lease civic-system/civic-mcp-operator",
            "[ok  ] webhook-tls    the caBundle of civic-mcp-civic-system verifies the serving certificate of Secret civic-system/civic-mcp-webhook-tls for 127.0.0.1",
            "[ok  ] webhook-tls    the serving certificate expires in ",
            "[ok  ] webhook-call   the webhook injected a dry-run pod in team (binding civic/support)",
            "[ok  ] integrations   1 CivicIntegration(s) in any namespace, all Ready",
            "[ok  ] opted-in-pods  all 0 live opted-in pod(s) carry the sidecar",
            "All checks passed (2 warning(s)).",
        ],
    )?;
    ensure!(!run.stdout.contains(&token) && !run.stderr.contains(&token));
    // The dry run stored nothing.
    let pods = Api::<Pod>::namespaced(admin.clone(), TEAM)
        .list(&ListParams::default())
        .await?;
    ensure!(pods.items.is_empty(), "pods stored: {:?}", pods.items);

    // JSON, one workload namespace.
    let run = check(
        &kubeconfig,
        &[
            "--operator-outside",
            "-o",
            "json",
            "--workload-namespace",
            TEAM,
        ],
    )
    .await?;
    ensure!(run.code == Some(0), "exit status {:?}", run.code);
    let v: Value = serde_json::from_str(&run.stdout).context("JSON output")?;
    ensure!(v["ok"] == true && v["namespace"] == OPERATOR_NS, "{v}");
    let call = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["check"] == "webhook-call")
        .context("webhook-call")?;
    ensure!(call["verdict"] == "pass", "{call}");

    // Without --operator-outside, the missing Deployments fail.
    let run = check(&kubeconfig, &[]).await?;
    ensure!(run.code == Some(1), "exit status {:?}", run.code);
    has(
        &run.stdout,
        &[
            "[FAIL] operator       no controller Deployment (label app.kubernetes.io/part-of=civic-mcp, app.kubernetes.io/component=controller) in namespace civic-system",
            "hint: install the chart",
        ],
    )?;

    // The chart's Deployments, as a kubelet would report them, the leader one of the
    // controller's pods: the operator namespace is found by the chart's labels, and the names
    // come from the Deployments' environment.
    for (component, env) in [
        (
            "controller",
            json!([{"name": "CIVIC_OPERATOR_LEASE_NAME", "value": common::LEASE}]),
        ),
        (
            "webhook",
            json!([{"name": "CIVIC_OPERATOR_WEBHOOK_CONFIG_NAME", "value": WEBHOOK_CONFIG},
                   {"name": "CIVIC_OPERATOR_WEBHOOK_CERT_SECRET", "value": common::CERT_SECRET}]),
        ),
    ] {
        let labels = json!({"app.kubernetes.io/name": "civic-mcp",
            "app.kubernetes.io/instance": "civic-mcp", "app.kubernetes.io/part-of": "civic-mcp",
            "app.kubernetes.io/component": component});
        let name = format!("civic-mcp-{component}");
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "operator",
                                      "image": "ghcr.io/civic-mcp/civic-operator:test", "env": env}]}}},
        }))?;
        let deployments: Api<Deployment> = Api::namespaced(admin.clone(), OPERATOR_NS);
        deployments.create(&PostParams::default(), &d).await?;
        deployments
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 2,
                                                 "availableReplicas": 2}})),
            )
            .await?;
        if component == "controller" {
            let leader: Pod = serde_json::from_value(json!({
                "metadata": {"name": "civic-operator-0", "labels": labels},
                "spec": {"containers": [{"name": "operator",
                                         "image": "ghcr.io/civic-mcp/civic-operator:test"}]},
            }))?;
            Api::<Pod>::namespaced(admin.clone(), OPERATOR_NS)
                .create(&PostParams::default(), &leader)
                .await?;
        }
    }
    let run = check(&kubeconfig, &[]).await?;
    ensure!(run.code == Some(0), "exit status {:?}", run.code);
    has(
        &run.stdout,
        &[
            "civic-operator check (operator namespace civic-system)",
            "[ok  ] operator       controller Deployment civic-mcp-controller: 2/2 replicas ready",
            "[ok  ] operator       webhook Deployment civic-mcp-webhook: 2/2 replicas ready",
            "[ok  ] leader         civic-operator-0 leads",
            "[ok  ] webhook-tls    the caBundle of civic-mcp-civic-system verifies",
            "All checks passed (0 warning(s)).",
        ],
    )?;
    // The leader's pod gone: the Lease is held by no controller pod.
    Api::<Pod>::namespaced(admin.clone(), OPERATOR_NS)
        .delete("civic-operator-0", &Default::default())
        .await?;
    let run = check(&kubeconfig, &["--namespace", OPERATOR_NS]).await?;
    ensure!(run.code == Some(1), "exit status {:?}", run.code);
    has(
        &run.stdout,
        &[
            "[FAIL] leader         Lease civic-system/civic-mcp-operator is held by civic-operator-0, which is not a live controller pod",
        ],
    )?;

    // A Deployment's pod that opted in after admission: the webhook never saw it.
    let deployment: Deployment = common::create_in(
        &admin,
        TEAM,
        json!({
            "metadata": {"name": "support-agent"},
            "spec": {"selector": {"matchLabels": {"app": "support-agent"}},
                     "template": {"metadata": {"labels": {"app": "support-agent"}},
                                  "spec": {"containers": [{"name": "agent", "image": "busybox"}]}}},
        }),
    )
    .await?;
    let rs: ReplicaSet = common::create_in(
        &admin,
        TEAM,
        json!({
            "metadata": {"name": "support-agent-7d9f", "ownerReferences":
                owner("Deployment", "support-agent", &deployment.uid().context("uid")?)},
            "spec": {"selector": {"matchLabels": {"app": "support-agent"}},
                     "template": {"metadata": {"labels": {"app": "support-agent"}},
                                  "spec": {"containers": [{"name": "agent", "image": "busybox"}]}}},
        }),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), TEAM);
    common::create_in::<Pod>(
        &admin,
        TEAM,
        json!({
            "metadata": {"name": "support-agent-7d9f-abcde", "labels": {"app": "support-agent"},
                         "ownerReferences": owner("ReplicaSet", "support-agent-7d9f", &rs.uid().context("uid")?)},
            "spec": {"containers": [{"name": "agent", "image": "busybox"}]},
        }),
    )
    .await?;
    pods.patch(
        "support-agent-7d9f-abcde",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"mcp.civic.com/inject": "enabled"}}})),
    )
    .await?;

    // An injected pod whose sidecar crashes (the status a kubelet would write).
    let injected: Pod = common::create_in(
        &admin,
        TEAM,
        json!({
            "metadata": {"name": "agent-1", "labels": {
                "app": "support-agent", "mcp.civic.com/inject": "enabled"}},
            "spec": {"containers": [{"name": "agent", "image": "busybox"}]},
        }),
    )
    .await?;
    ensure!(
        civic_operator::inject::is_injected(&injected),
        "{injected:?}"
    );
    pods.patch_status(
        "agent-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "initContainerStatuses": [{
            "name": "civic-sidecar", "ready": false, "restartCount": 3,
            "image": "ghcr.io/civic-mcp/civic-sidecar:test", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "token exchange refused: invalid_client\nmore lines"}},
        }]}})),
    )
    .await?;

    // An integration whose Secret does not exist.
    let mut broken = integration("broken", &env.auth.token_url());
    broken["spec"]["clientSecretRef"]["name"] = json!("missing-secret");
    broken["spec"]["bindings"][0]["podSelector"]["matchLabels"]["app"] = json!("other");
    create_integration(&admin, broken).await?;
    ready("broken", "False").await?;

    let run = check(&kubeconfig, &["--operator-outside"]).await?;
    ensure!(run.code == Some(1), "exit status {:?}", run.code);
    has(
        &run.stdout,
        &[
            "[ok  ] webhook-call   the webhook injected a dry-run pod in team (binding civic/support)",
            "[FAIL] integrations   team/broken: Ready=False SecretNotFound: ",
            "hint: kubectl -n team describe civicintegration broken",
            "[FAIL] opted-in-pods  team: deployment/support-agent runs 1 opted-in pod(s) without the sidecar (support-agent-7d9f-abcde)",
            "hint: kubectl -n team rollout restart deployment/support-agent",
            "[FAIL] sidecars       team/agent-1: civic-sidecar not ready (restarts 3; waiting: CrashLoopBackOff (back-off 40s restarting failed container); last terminated: Error (exit code 1): token exchange refused: invalid_client)",
            "hint: kubectl -n team logs agent-1 -c civic-sidecar --previous",
            "3 check(s) failed",
        ],
    )?;

    // The webhook stopped, and its caBundle replaced by another CA (with the webhook running, it
    // would put its own back at once).
    operator.stop();
    let other = civic_operator::certs::issue::new_ca(
        std::time::SystemTime::now(),
        Duration::from_secs(3600),
    )?;
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        other.cert_pem.as_bytes(),
    );
    configs
        .patch(
            WEBHOOK_CONFIG,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(json!([
                {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": b64}
            ]))?),
        )
        .await?;
    let run = check(
        &kubeconfig,
        &["--operator-outside", "--workload-namespace", TEAM],
    )
    .await?;
    ensure!(run.code == Some(1), "exit status {:?}", run.code);
    has(
        &run.stdout,
        &[
            "[FAIL] webhook-tls    the serving certificate in Secret civic-system/civic-mcp-webhook-tls does not verify for 127.0.0.1 against the caBundle of civic-mcp-civic-system (1 CA: ",
            "[FAIL] webhook-call   a dry-run pod in team was refused: the apiserver could not call the webhook",
        ],
    )?;

    // The configuration gone: found, with what it means.
    configs.delete(WEBHOOK_CONFIG, &Default::default()).await?;
    let run = check(&kubeconfig, &["--operator-outside"]).await?;
    ensure!(run.code == Some(1), "exit status {:?}", run.code);
    has(
        &run.stdout,
        &["[FAIL] webhook-tls    MutatingWebhookConfiguration civic-mcp-civic-system not found"],
    )?;

    // Usage errors, and no cluster to ask: 2.
    let run = check(&kubeconfig, &["-o", "yaml"]).await?;
    ensure!(run.code == Some(2), "exit status {:?}", run.code);
    let run = check(&kubeconfig, &["--context", "no-such-context"]).await?;
    ensure!(run.code == Some(2), "exit status {:?}", run.code);
    let run = check(&env.cluster.dir().join("no-such-kubeconfig"), &[]).await?;
    ensure!(run.code == Some(2), "exit status {:?}", run.code);
    ensure!(!run.stderr.is_empty());
    Ok(())
}
