//! Smoke tests of the real kube-apiserver tier: what later tiers rely on (CRDs with a status
//! subresource, server-side apply, token users under RBAC, restarts, the controller manager)
//! works against `civic_testkit::apiserver::KubeApiServer`. Fails, never skips, when the
//! binaries are missing: run `scripts/kube/build.sh`.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use civic_testkit::apiserver::{ADMIN_USER, KubeApiServer};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::json;

const NS: &str = "smoke";
const CRD_NAME: &str = "widgets.smoke.civic.test";
const MANAGER: &str = "civic-smoke";
const SA_NS: &str = "civic-system";
const SA_NAME: &str = "civic-operator";
/// Bound on every "eventually" below: RBAC and controllers act asynchronously.
const EVENTUALLY: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Ok(true)`, at most `EVENTUALLY`.
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let last = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => "condition false".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what}: not true after {EVENTUALLY:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("smoke.civic.test", "v1", "Widget"),
        "widgets",
    )
}

fn widget_crd() -> anyhow::Result<CustomResourceDefinition> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": "smoke.civic.test",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1},
                            "color": {"type": "string"},
                        }},
                        "status": {"type": "object", "properties": {
                            "phase": {"type": "string"},
                        }},
                    },
                }},
            }],
        },
    }))?)
}

async fn install_crd(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        CRD_NAME,
        &PatchParams::apply(MANAGER),
        &Patch::Apply(widget_crd()?),
    )
    .await
    .context("applying the CRD")?;
    eventually("CRD established", || async {
        let crd = crds.get(CRD_NAME).await?;
        Ok(crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"))
    })
    .await
}

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// A Role that may read widgets, bound to `subject` in `NS`.
async fn grant_widget_read(
    client: &kube::Client,
    binding: &str,
    subject: serde_json::Value,
) -> anyhow::Result<()> {
    let roles: Api<Role> = Api::namespaced(client.clone(), NS);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "widget-reader"},
        "rules": [{"apiGroups": ["smoke.civic.test"], "resources": ["widgets"],
                   "verbs": ["get", "list", "watch"]}],
    }))?;
    roles
        .patch(
            "widget-reader",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(role),
        )
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), NS);
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "widget-reader"},
        "subjects": [subject],
    }))?;
    bindings.create(&PostParams::default(), &rb).await?;
    Ok(())
}

#[tokio::test]
async fn crd_apply_rbac_and_restart() -> anyhow::Result<()> {
    let mut cluster = KubeApiServer::builder()
        .user("alice", &[])
        .service_account(SA_NS, SA_NAME)
        .start()
        .await?;
    eprintln!(
        "etcd + kube-apiserver ready after {:?}",
        cluster.ready_after()
    );
    assert!(cluster.url().starts_with("https://127.0.0.1:"));
    assert!(cluster.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));

    let admin = cluster.admin_client().await?;
    create_namespace(&admin, NS).await?;
    install_crd(&admin).await?;

    // Create, then server-side apply a change under one field manager.
    let widgets: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &widget_resource());
    let mut w = DynamicObject::new("w1", &widget_resource()).within(NS);
    w.data = json!({"spec": {"size": 1}});
    let created = widgets.create(&PostParams::default(), &w).await?;
    let applied = widgets
        .patch(
            "w1",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "smoke.civic.test/v1", "kind": "Widget",
                "metadata": {"name": "w1"},
                "spec": {"size": 3, "color": "teal"},
            })),
        )
        .await?;
    assert_eq!(applied.data["spec"]["size"], 3);
    assert_eq!(applied.data["spec"]["color"], "teal");
    assert_ne!(
        applied.metadata.resource_version,
        created.metadata.resource_version
    );
    let managers: Vec<(String, String)> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&(MANAGER.to_owned(), "Apply".to_owned())),
        "{managers:?}"
    );

    // The schema is enforced.
    let mut bad = DynamicObject::new("bad", &widget_resource()).within(NS);
    bad.data = json!({"spec": {"size": 0}});
    let err = widgets
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("size 0 violates minimum 1");
    assert_eq!(status_code(&err), Some(422), "{err}");

    // Status is written through the status subresource; the main resource ignores it.
    let status_apply = json!({
        "apiVersion": "smoke.civic.test/v1", "kind": "Widget",
        "metadata": {"name": "w1"},
        "status": {"phase": "Ready"},
    });
    let with_status = widgets
        .patch_status(
            "w1",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&status_apply),
        )
        .await?;
    assert_eq!(with_status.data["status"]["phase"], "Ready");
    assert_eq!(with_status.data["spec"]["size"], 3);
    let after_main = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ignored"}})),
        )
        .await?;
    assert_eq!(after_main.data["status"]["phase"], "Ready");

    // A token user without RBAC is forbidden; a RoleBinding to it lets it read.
    let alice = cluster.client_for("alice").await?;
    let alice_widgets: Api<DynamicObject> = Api::namespaced_with(alice, NS, &widget_resource());
    let err = alice_widgets
        .list(&ListParams::default())
        .await
        .expect_err("no RBAC yet");
    assert_eq!(status_code(&err), Some(403), "{err}");
    grant_widget_read(
        &admin,
        "alice-reads",
        json!({"kind": "User", "name": "alice"}),
    )
    .await?;
    eventually("alice may list widgets", || async {
        Ok(alice_widgets
            .list(&ListParams::default())
            .await?
            .items
            .len()
            == 1)
    })
    .await?;

    // The ServiceAccount-shaped user is bound by a RoleBinding to the ServiceAccount itself.
    let sa_user = KubeApiServer::service_account_user(SA_NS, SA_NAME);
    let sa_widgets: Api<DynamicObject> =
        Api::namespaced_with(cluster.client_for(&sa_user).await?, NS, &widget_resource());
    let err = sa_widgets.get("w1").await.expect_err("no RBAC yet");
    assert_eq!(status_code(&err), Some(403), "{err}");
    grant_widget_read(
        &admin,
        "operator-reads",
        json!({"kind": "ServiceAccount", "name": SA_NAME, "namespace": SA_NS}),
    )
    .await?;
    eventually("the ServiceAccount user may get w1", || async {
        Ok(sa_widgets.get("w1").await?.data["spec"]["size"] == 3)
    })
    .await?;

    // Unknown tokens are unauthenticated; a written kubeconfig works as its user.
    let stranger = cluster.client_with_token("not-a-registered-token").await?;
    let err = Api::<Namespace>::all(stranger)
        .list(&ListParams::default())
        .await
        .expect_err("unknown token");
    assert_eq!(status_code(&err), Some(401), "{err}");
    let kubeconfig = cluster.write_kubeconfig("alice")?;
    let from_file = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let via_file: Api<DynamicObject> =
        Api::namespaced_with(kube::Client::try_from(from_file)?, NS, &widget_resource());
    assert_eq!(via_file.list(&ListParams::default()).await?.items.len(), 1);
    assert_ne!(cluster.token_for("alice")?, cluster.token_for(ADMIN_USER)?);

    // Without kube-controller-manager no ServiceAccount exists, and the ServiceAccount
    // admission plugin rejects pods (why pod tests use `with_controller_manager()`).
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p0"},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
    }))?;
    let err = Api::<Pod>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await
        .expect_err("no default ServiceAccount without the controller manager");
    assert!(err.to_string().contains("serviceaccount"), "{err}");

    // Restart keeps etcd: the object, its status and its resourceVersion survive.
    let url_before = cluster.url();
    let restart_started = Instant::now();
    cluster.restart().await?;
    eprintln!(
        "kube-apiserver restarted in {:?}",
        restart_started.elapsed()
    );
    assert_eq!(cluster.url(), url_before, "restart keeps the port");
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(cluster.admin_client().await?, NS, &widget_resource());
    let back = widgets.get("w1").await?;
    assert_eq!(back.data["spec"]["color"], "teal");
    assert_eq!(back.data["status"]["phase"], "Ready");
    assert_eq!(
        back.metadata.resource_version,
        after_main.metadata.resource_version
    );
    // Old clients reconnect to the same URL.
    assert_eq!(
        alice_widgets
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn controller_manager_service_accounts_and_garbage_collection() -> anyhow::Result<()> {
    let cluster = KubeApiServer::builder()
        .with_controller_manager()
        .start()
        .await?;
    let admin = cluster.admin_client().await?;
    create_namespace(&admin, "gc").await?;

    // The ServiceAccount controller fills a new namespace; since 1.24 no token Secret is made
    // (pods get projected, expiring tokens instead).
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "gc");
    eventually("default ServiceAccount in gc", || async {
        Ok(accounts
            .get_opt("default")
            .await?
            .is_some_and(|sa| sa.secrets.unwrap_or_default().is_empty()))
    })
    .await?;

    // So the ServiceAccount admission plugin admits pods (no kubelet: they never run).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "gc");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p1"},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
    }))?;
    let pod = pods.create(&PostParams::default(), &pod).await?;
    assert_eq!(
        pod.spec.and_then(|s| s.service_account_name).as_deref(),
        Some("default")
    );

    // Garbage collection: deleting an owner deletes its dependent.
    let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), "gc");
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}}))?;
    let owner = maps.create(&PostParams::default(), &owner).await?;
    let uid = owner.metadata.uid.context("owner has a uid")?;
    let dependent: ConfigMap = serde_json::from_value(json!({"metadata": {
        "name": "dependent",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
    }}))?;
    maps.create(&PostParams::default(), &dependent).await?;
    maps.delete("owner", &DeleteParams::background()).await?;
    eventually("dependent ConfigMap garbage-collected", || async {
        Ok(maps.get_opt("dependent").await?.is_none())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_failed_start_reports_the_process_log() -> anyhow::Result<()> {
    let err = KubeApiServer::builder()
        .apiserver_arg("--no-such-flag=1")
        .start()
        .await
        .expect_err("kube-apiserver rejects an unknown flag");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("kube-apiserver exited before it was ready"),
        "{msg}"
    );
    assert!(msg.contains("unknown flag: --no-such-flag"), "{msg}");
    Ok(())
}
