use super::*;
use serde_json::json;

fn host(url: &str) -> bool {
    let url = Url::parse(url).unwrap();
    is_cluster_internal(&url.host().unwrap())
}

fn codes(findings: &[Finding]) -> Vec<(&'static str, Severity)> {
    findings.iter().map(|f| (f.code, f.severity)).collect()
}

#[test]
fn cluster_internal_hosts() {
    for internal in [
        "https://kubernetes.default.svc",
        "https://kubernetes.default.svc.cluster.local",
        "https://kubernetes.default.svc.cluster.local.",
        "https://kubernetes",
        "https://api.team.svc",
        "https://localhost:6443",
        "https://LOCALHOST",
        "https://foo.localhost",
        "https://ip-172-16-45-221.eu-west-1.compute.internal",
        "https://10.0.0.1",
        "https://172.16.3.4",
        "https://172.31.255.255",
        "https://192.168.1.10:6443",
        "https://127.0.0.1:42",
        "https://169.254.169.254",
        "https://100.64.0.1",
        "https://0.0.0.0",
        "https://[::1]:6443",
        "https://[fd00::1]",
        "https://[fe80::1]",
        "https://[::ffff:10.1.2.3]",
    ] {
        assert!(host(internal), "{internal} is internal");
    }
    for public in [
        "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC",
        "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c",
        "https://westeurope.oic.prod-aks.azure.com/tenant/uuid/",
        "https://issuer.example.com",
        "https://svc.example.com",
        "https://cluster.local.example.com",
        "https://203.0.113.10:6443",
        "https://172.32.0.1",
        "https://100.128.0.1",
        "https://[2001:db8::1]",
    ] {
        assert!(!host(public), "{public} is public");
    }
}

#[test]
fn issuer_checks() {
    assert!(check_issuer("https://oidc.eks.eu-west-1.amazonaws.com/id/ABC").is_empty());
    assert_eq!(
        codes(&check_issuer(
            "https://kubernetes.default.svc.cluster.local"
        )),
        [("issuer_cluster_internal", Severity::Error)]
    );
    assert_eq!(
        codes(&check_issuer("http://issuer.example.com")),
        [("issuer_not_https", Severity::Error)]
    );
    assert_eq!(
        codes(&check_issuer("http://127.0.0.1:8080")),
        [
            ("issuer_not_https", Severity::Error),
            ("issuer_cluster_internal", Severity::Error)
        ]
    );
    assert_eq!(
        codes(&check_issuer("kubernetes.default.svc")),
        [("issuer_not_url", Severity::Error)]
    );
    let f = &check_issuer("https://kubernetes.default.svc")[0];
    assert!(
        f.message.contains("public https URL") && f.message.contains("docs/issuer.md"),
        "says what to do: {}",
        f.message
    );
}

#[test]
fn jwks_checks() {
    let none: &[String] = &[];
    let public = "https://oidc.example.com/keys";
    assert!(check_jwks(public, none, true).is_empty());
    assert!(check_jwks(public, none, false).is_empty());

    // EKS: public issuer, the apiserver's copy names an internal host.
    let eks = "https://ip-172-16-45-221.eu-west-1.compute.internal:443/openid/v1/jwks";
    let f = check_jwks(eks, none, true);
    assert_eq!(codes(&f), [("jwks_not_public", Severity::Warning)]);
    assert!(
        f[0].message.contains("jwks_uri it names"),
        "{}",
        f[0].message
    );
    // The same with an internal issuer: nothing can work.
    assert_eq!(
        codes(&check_jwks(eks, none, false)),
        [("jwks_not_public", Severity::Error)]
    );

    // A public address that is the apiserver's own.
    let own = "https://203.0.113.10:6443/openid/v1/jwks";
    assert!(check_jwks(own, none, true).is_empty());
    let hosts = vec!["203.0.113.10".to_owned()];
    let f = check_jwks(own, &hosts, false);
    assert_eq!(codes(&f), [("jwks_not_public", Severity::Error)]);
    assert!(
        f[0].message.contains("apiserver itself"),
        "{}",
        f[0].message
    );
    assert!(f[0].message.contains("Azure Workload Identity"));
    let v6 = vec!["2001:db8::1".to_owned()];
    assert_eq!(
        check_jwks("https://[2001:db8::1]:6443/openid/v1/jwks", &v6, true).len(),
        1
    );

    assert_eq!(
        codes(&check_jwks("http://keys.example.com/jwks", none, true)),
        [("jwks_not_public", Severity::Warning)]
    );
    assert_eq!(
        codes(&check_jwks("not a url", none, true)),
        [("jwks_not_url", Severity::Error)]
    );
}

#[test]
fn refused_discovery_says_what_to_do() {
    let f = discovery_refused(403, "forbidden");
    assert_eq!(
        (f.code, f.severity),
        ("discovery_unreadable", Severity::Error)
    );
    assert!(f.message.contains(DISCOVERY_ROLE), "{}", f.message);
    let f = discovery_refused(404, "not found");
    assert!(
        f.message.contains("--service-account-issuer"),
        "{}",
        f.message
    );
    assert!(discovery_refused(500, "boom").message.contains("boom"));
}

fn integration(ns: &str, name: &str, bindings: serde_json::Value) -> CivicIntegration {
    serde_json::from_value(json!({
        "apiVersion": "mcp.civic.com/v1alpha1",
        "kind": "CivicIntegration",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clientId": "client",
            "clientSecretRef": {"name": "s", "key": "k"},
            "bindings": bindings,
        },
    }))
    .unwrap()
}

fn binding(name: &str, app: &str, subject: serde_json::Value) -> serde_json::Value {
    json!({
        "name": name,
        "podSelector": {"matchLabels": {"app": app}},
        "profileId": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "subject": subject,
    })
}

fn pod(
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    annots: serde_json::Value,
    sa: Option<&str>,
) -> Pod {
    let mut spec = json!({"containers": [{"name": "app", "image": "app"}]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annots},
        "spec": spec,
    }))
    .unwrap()
}

#[test]
fn bindings_collect_the_service_accounts_of_selected_pods() {
    let sa = json!({"serviceAccountToken": {"audience": "civic"}});
    let cis = vec![
        integration(
            "team",
            "civic",
            json!([
                binding("support", "support-agent", sa.clone()),
                binding("idle", "nobody", sa.clone()),
                binding(
                    "per-user",
                    "web",
                    json!({"requestHeader": {"name": "Authorization"}})
                ),
                binding(
                    "static",
                    "batch",
                    json!({"civicTokenSecretRef": {"name": "tok", "key": "t"}})
                ),
            ]),
        ),
        integration("other", "civic", json!([binding("all", "x", sa.clone())])),
    ];
    let on = |app: &str| json!({"app": app, "mcp.civic.com/inject": "enabled"});
    let pods = vec![
        pod("team", "a", on("support-agent"), json!({}), Some("agent")),
        pod("team", "b", on("support-agent"), json!({}), None),
        pod("team", "c", on("support-agent"), json!({}), Some("agent")),
        // Not opted in: the webhook never sees it.
        pod(
            "team",
            "d",
            json!({"app": "support-agent"}),
            json!({}),
            Some("stranger"),
        ),
        // Injected earlier for a binding its labels no longer select: it still runs that sidecar.
        pod(
            "team",
            "e",
            on("renamed"),
            json!({"mcp.civic.com/injected": "civic/support"}),
            Some("legacy"),
        ),
        // Same labels in another namespace: that namespace's integration, not this one.
        pod("other", "f", on("support-agent"), json!({}), Some("agent")),
    ];
    let out = bindings(&cis, &pods, &BTreeSet::new());
    let by_name: BTreeMap<String, &Trust> = out
        .iter()
        .map(|b| {
            (
                format!("{}/{}/{}", b.namespace, b.integration, b.binding),
                &b.trust,
            )
        })
        .collect();
    assert_eq!(
        by_name["team/civic/support"],
        &Trust::ServiceAccountToken {
            audience: "civic".into(),
            subjects: vec![
                "system:serviceaccount:team:agent".into(),
                "system:serviceaccount:team:default".into(),
                "system:serviceaccount:team:legacy".into(),
            ],
            pattern: false,
        }
    );
    assert_eq!(
        by_name["team/civic/idle"],
        &Trust::ServiceAccountToken {
            audience: "civic".into(),
            subjects: vec!["system:serviceaccount:team:<service-account-name>".into()],
            pattern: true,
        }
    );
    assert_eq!(
        by_name["other/civic/all"],
        &Trust::ServiceAccountToken {
            audience: "civic".into(),
            subjects: vec!["system:serviceaccount:other:<service-account-name>".into()],
            pattern: true,
        }
    );
    assert_eq!(
        by_name["team/civic/per-user"],
        &Trust::RequestHeader {
            header: "Authorization".into()
        }
    );
    assert_eq!(
        by_name["team/civic/static"],
        &Trust::CivicTokenSecretRef {
            secret: "tok".into()
        }
    );

    // Pods that could not be listed: the pattern, not a partial list.
    let unlisted = BTreeSet::from(["team".to_owned()]);
    let out = bindings(&cis, &pods, &unlisted);
    let support = out.iter().find(|b| b.binding == "support").unwrap();
    assert!(matches!(
        support.trust,
        Trust::ServiceAccountToken { pattern: true, .. }
    ));
}

fn discovery(issuer: &str, jwks: &str) -> Discovery {
    Discovery {
        issuer: issuer.into(),
        jwks_uri: jwks.into(),
        id_token_signing_alg_values_supported: vec!["RS256".into()],
    }
}

#[test]
fn report_for_a_cluster_internal_issuer() {
    let cis = vec![integration(
        "team",
        "civic",
        json!([
            binding(
                "support",
                "support-agent",
                json!({"serviceAccountToken": {"audience": "civic"}})
            ),
            binding(
                "per-user",
                "web",
                json!({"requestHeader": {"name": "X-User-Token"}})
            ),
        ]),
    )];
    let r = Report::new(
        Ok(discovery(
            "https://kubernetes.default.svc.cluster.local",
            "https://127.0.0.1:6443/openid/v1/jwks",
        )),
        vec![KeyInfo {
            kid: "k1".into(),
            kty: "RSA".into(),
            alg: Some("RS256".into()),
        }],
        &["127.0.0.1".to_owned()],
        Some(bindings(&cis, &[], &BTreeSet::new())),
        Vec::new(),
    );
    assert!(!r.usable);
    assert_eq!(
        codes(&r.warnings),
        [
            ("issuer_cluster_internal", Severity::Error),
            ("jwks_not_public", Severity::Error)
        ]
    );
    let text = r.text();
    for want in [
        "Issuer URL:      https://kubernetes.default.svc.cluster.local",
        "JWKS URI:        https://127.0.0.1:6443/openid/v1/jwks",
        "Discovery:       https://kubernetes.default.svc.cluster.local/.well-known/openid-configuration",
        "Signing keys:    k1 (RS256)",
        "team/civic/support",
        "Audience:      civic",
        "Subject (sub): system:serviceaccount:team:<service-account-name>  (no pod runs yet",
        "Other bindings:\n  team/civic/per-user: per-user (subject from request header X-User-Token): Civic Auth must trust the external identity provider",
        "error [issuer_cluster_internal]",
        "cannot work for Civic Auth",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["issuer"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(v["jwksUri"], "https://127.0.0.1:6443/openid/v1/jwks");
    assert_eq!(v["usable"], false);
    assert_eq!(v["bindings"][1]["subject"], "serviceAccountToken");
    assert_eq!(v["bindings"][1]["audience"], "civic");
    assert_eq!(v["bindings"][0]["subject"], "requestHeader");
    assert_eq!(v["warnings"][0]["severity"], "error");
}

#[test]
fn report_for_a_public_issuer_is_usable() {
    let r = Report::new(
        Ok(discovery(
            "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC",
            "https://ip-10-0-0-1.eu-west-1.compute.internal:443/openid/v1/jwks",
        )),
        Vec::new(),
        &[],
        Some(Vec::new()),
        Vec::new(),
    );
    assert!(r.usable);
    assert_eq!(codes(&r.warnings), [("jwks_not_public", Severity::Warning)]);
    assert!(r.text().contains("The issuer can work for Civic Auth."));
    assert!(
        r.text()
            .contains("No binding exchanges a service-account token")
    );
}

#[test]
fn report_without_discovery() {
    let r = Report::new(
        Err(discovery_refused(403, "forbidden")),
        Vec::new(),
        &[],
        None,
        vec![Finding::warning("integrations_unreadable", "x".into())],
    );
    assert!(!r.usable);
    assert_eq!(r.issuer, None);
    assert_eq!(
        codes(&r.warnings),
        [
            ("discovery_unreadable", Severity::Error),
            ("integrations_unreadable", Severity::Warning)
        ]
    );
    assert!(r.text().contains("Issuer URL:      (unknown: see below)"));
    assert!(r.text().contains("Bindings: unknown (see below)."));
    assert_eq!(serde_json::to_value(&r).unwrap()["bindings"], json!(null));
}

#[tokio::test]
async fn discovery_refusal_is_not_retried() {
    use crate::testing::{ApiMock, json_response};
    let (client, mut mock) = ApiMock::new();
    let task = tokio::spawn(async move { discover(&client, 4).await });
    mock.expect(
        http::Method::GET,
        DISCOVERY_PATH,
        json_response(
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": "forbidden", "reason": "Forbidden", "code": 403}),
        ),
    )
    .await;
    match task.await.unwrap() {
        Err(DiscoveryError::Refused { code: 403, .. }) => {}
        other => panic!("{other:?}"),
    }
}
