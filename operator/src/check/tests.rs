//! Each check's verdicts from fixture objects: a pass and every failure it reports.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::certs::issue::{CertKey, new_ca, serving};

const DAY: Duration = Duration::from_secs(86_400);

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a fixture")
}

fn verdicts(lines: &[Line]) -> Vec<Verdict> {
    lines.iter().map(|l| l.verdict).collect()
}

fn only(lines: &[Line]) -> &Line {
    assert_eq!(lines.len(), 1, "{lines:#?}");
    &lines[0]
}

// ---------------------------------------------------------------- crd

fn established(mut crd: CustomResourceDefinition, status: &str) -> CustomResourceDefinition {
    crd.status = Some(from(json!({"conditions": [{
        "type": "Established", "status": status, "reason": "x", "message": "not yet",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]})));
    crd
}

#[test]
fn crd_passes_when_installed_established_and_identical() {
    let ours = CivicIntegration::crd();
    let lines = check_crd(Some(&established(ours.clone(), "True")), &ours);
    let l = only(&lines);
    assert_eq!(l.verdict, Verdict::Pass);
    assert!(l.message.contains("serves v1alpha1"), "{}", l.message);
}

#[test]
fn crd_fails_when_absent_or_not_established() {
    let ours = CivicIntegration::crd();
    let l = &check_crd(None, &ours)[0];
    assert_eq!(l.verdict, Verdict::Fail);
    assert!(l.hint.as_deref().unwrap().contains("civic-operator crd"));
    let lines = check_crd(Some(&established(ours.clone(), "False")), &ours);
    assert_eq!(verdicts(&lines), [Verdict::Fail]);
    assert!(lines[0].message.contains("not Established: not yet"));
    assert_eq!(verdicts(&check_crd(Some(&ours), &ours)), [Verdict::Fail]);
}

#[test]
fn crd_fails_without_our_version_and_warns_on_another_schema() {
    let ours = CivicIntegration::crd();
    let mut old = established(ours.clone(), "True");
    old.spec.versions[0].name = "v1alpha0".into();
    let lines = check_crd(Some(&old), &ours);
    assert_eq!(verdicts(&lines), [Verdict::Fail]);
    assert!(
        lines[0]
            .message
            .contains("does not serve mcp.civic.com/v1alpha1")
    );

    let mut unserved = established(ours.clone(), "True");
    unserved.spec.versions[0].served = false;
    assert_eq!(
        verdicts(&check_crd(Some(&unserved), &ours)),
        [Verdict::Fail]
    );

    let mut drifted = established(ours.clone(), "True");
    drifted.spec.versions[0].schema = None;
    drifted.spec.versions[0].storage = false;
    let lines = check_crd(Some(&drifted), &ours);
    assert_eq!(verdicts(&lines), [Verdict::Warn, Verdict::Warn]);
    assert!(lines[1].message.contains("schema"), "{lines:#?}");
}

// ---------------------------------------------------------------- operator

fn deployment(component: &str, desired: i32, ready: i32) -> Deployment {
    from(json!({
        "metadata": {"name": format!("civic-mcp-{component}"), "namespace": "civic-system",
                     "labels": {"app.kubernetes.io/part-of": "civic-mcp",
                                "app.kubernetes.io/component": component}},
        "spec": {"replicas": desired,
                 "selector": {"matchLabels": {"app.kubernetes.io/component": component}},
                 "template": {"spec": {"containers": [{"name": "operator", "env": [
                     {"name": "CIVIC_OPERATOR_LEASE_NAME", "value": "my-lease"}]}]}}},
        "status": {"readyReplicas": ready},
    }))
}

#[test]
fn operator_passes_with_both_deployments_available() {
    let ds = [deployment("controller", 2, 2), deployment("webhook", 2, 2)];
    let lines = check_operator("civic-system", &ds, false);
    assert_eq!(verdicts(&lines), [Verdict::Pass, Verdict::Pass]);
    assert!(lines[0].message.contains("civic-mcp-controller: 2/2"));
    assert_eq!(fullname(&ds), "civic-mcp");
    assert_eq!(
        env_of(component(&ds, "controller"), "CIVIC_OPERATOR_LEASE_NAME").as_deref(),
        Some("my-lease")
    );
}

#[test]
fn the_cert_manager_secret_is_the_one_mounted_at_the_cert_dir() {
    let d: Deployment = from(json!({
        "metadata": {"name": "civic-mcp-webhook"},
        "spec": {"selector": {}, "template": {"spec": {
            "containers": [{"name": "operator",
                "env": [{"name": "CIVIC_OPERATOR_WEBHOOK_CERT_DIR", "value": "/etc/tls"}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                 {"name": "webhook-tls", "mountPath": "/etc/tls/"}]}],
            "volumes": [{"name": "tmp", "emptyDir": {}},
                        {"name": "webhook-tls", "secret": {"secretName": "from-cert-manager"}}]}}},
    }));
    assert_eq!(
        cert_dir_secret(Some(&d)).as_deref(),
        Some("from-cert-manager")
    );
    assert_eq!(cert_dir_secret(Some(&deployment("webhook", 1, 1))), None);
}

#[test]
fn operator_fails_when_missing_unready_or_scaled_down() {
    let lines = check_operator("civic-system", &[], false);
    assert_eq!(verdicts(&lines), [Verdict::Fail, Verdict::Fail]);
    assert!(lines[0].hint.as_deref().unwrap().contains("helm install"));
    // Outside the cluster, a missing Deployment only warns.
    let lines = check_operator("civic-system", &[], true);
    assert_eq!(verdicts(&lines), [Verdict::Warn, Verdict::Warn]);

    let ds = [deployment("controller", 2, 0), deployment("webhook", 2, 1)];
    let lines = check_operator("civic-system", &ds, false);
    assert_eq!(verdicts(&lines), [Verdict::Fail, Verdict::Warn]);
    assert!(lines[0].message.contains("0/2 replicas ready"));
    assert!(
        lines[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("logs deployment/civic-mcp-controller")
    );
    let ds = [deployment("controller", 0, 0), deployment("webhook", 1, 1)];
    let lines = check_operator("civic-system", &ds, false);
    assert_eq!(verdicts(&lines), [Verdict::Fail, Verdict::Pass]);
    assert!(lines[0].message.contains("scaled to 0"));
}

// ---------------------------------------------------------------- leader

fn lease(holder: &str, renewed_secs_ago: u64, now: SystemTime) -> Lease {
    let renewed =
        k8s_openapi::jiff::Timestamp::try_from(now - Duration::from_secs(renewed_secs_ago))
            .unwrap();
    from(json!({
        "metadata": {"name": "civic-mcp-operator"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": renewed.to_string()},
    }))
}

fn pod(v: Value) -> Pod {
    from(v)
}

#[test]
fn leader_passes_when_a_live_controller_pod_holds_a_fresh_lease() {
    let now = SystemTime::now();
    let pods = [pod(
        json!({"metadata": {"name": "ctl-0"}, "status": {"phase": "Running"}}),
    )];
    let l = check_leader(
        "ns",
        "civic-mcp-operator",
        Some(&lease("ctl-0", 3, now)),
        Some(&pods),
        now,
    );
    assert_eq!(l.verdict, Verdict::Pass, "{l:?}");
    assert!(l.message.contains("ctl-0 leads"));
    // Outside the cluster, any holder will do.
    let l = check_leader(
        "ns",
        "civic-mcp-operator",
        Some(&lease("laptop", 3, now)),
        None,
        now,
    );
    assert_eq!(l.verdict, Verdict::Pass);
}

#[test]
fn leader_fails_without_lease_holder_or_live_holder() {
    let now = SystemTime::now();
    assert_eq!(
        check_leader("ns", "l", None, None, now).verdict,
        Verdict::Fail
    );
    let l = check_leader("ns", "l", Some(&lease("", 1, now)), None, now);
    assert!(l.verdict == Verdict::Fail && l.message.contains("not held"));
    let l = check_leader("ns", "l", Some(&lease("ctl-0", 60, now)), None, now);
    assert!(
        l.verdict == Verdict::Fail && l.message.contains("expired"),
        "{l:?}"
    );
    let pods = [
        pod(json!({"metadata": {"name": "ctl-0"}, "status": {"phase": "Failed"}})),
        pod(json!({"metadata": {"name": "ctl-1"}, "status": {"phase": "Running"}})),
    ];
    let l = check_leader("ns", "l", Some(&lease("ctl-0", 1, now)), Some(&pods), now);
    assert!(l.verdict == Verdict::Fail && l.message.contains("not a live controller pod"));
}

// ---------------------------------------------------------------- webhook TLS

fn config(ca_pem: &str, client: Value) -> MutatingWebhookConfiguration {
    let mut client = client;
    client["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(ca_pem));
    from(json!({
        "metadata": {"name": "civic-mcp-civic-system"},
        "webhooks": [{"name": WEBHOOK_NAME, "clientConfig": client,
                      "admissionReviewVersions": ["v1"], "sideEffects": "None"}],
    }))
}

fn service() -> Value {
    json!({"service": {"name": "civic-mcp-webhook", "namespace": "civic-system"}})
}

const SVC_NAME: &str = "civic-mcp-webhook.civic-system.svc";

fn pair(ca_days: u64, cert_days: u64, names: &[&str]) -> (CertKey, CertKey) {
    let now = SystemTime::now();
    let ca = new_ca(now, DAY * ca_days as u32).unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let leaf = serving(&ca, &names, now, DAY * cert_days as u32).unwrap();
    (ca, leaf)
}

fn tls(
    config: Option<&MutatingWebhookConfiguration>,
    crt: Result<Option<String>, String>,
) -> Vec<Line> {
    check_webhook_tls(
        "civic-system",
        "civic-mcp-civic-system",
        config,
        "civic-mcp-webhook-tls",
        crt,
        SystemTime::now(),
    )
}

#[test]
fn webhook_tls_passes_when_the_bundle_verifies_the_serving_cert() {
    let (ca, leaf) = pair(1800, 90, &[SVC_NAME]);
    let other = new_ca(SystemTime::now(), DAY * 1800).unwrap();
    // A bundle mid-rotation holds two CAs; one of them signed the certificate.
    let cfg = config(&format!("{}{}", other.cert_pem, ca.cert_pem), service());
    assert_eq!(server_name(&cfg).as_deref(), Some(SVC_NAME));
    let lines = tls(Some(&cfg), Ok(Some(leaf.cert_pem)));
    assert_eq!(verdicts(&lines), [Verdict::Pass; 3], "{lines:#?}");
    assert!(
        lines[1]
            .message
            .contains("serving certificate expires in 89 days")
    );
    assert!(lines[2].message.contains("its CA expires in 1799 days"));

    let url = json!({"url": "https://127.0.0.1:9443/inject"});
    let (ca, leaf) = pair(1800, 90, &["127.0.0.1"]);
    let cfg = config(&ca.cert_pem, url);
    assert_eq!(server_name(&cfg).as_deref(), Some("127.0.0.1"));
    assert_eq!(
        verdicts(&tls(Some(&cfg), Ok(Some(leaf.cert_pem)))),
        [Verdict::Pass; 3]
    );
}

#[test]
fn webhook_tls_fails_on_a_missing_config_empty_or_wrong_bundle_or_name() {
    let l = &tls(None, Ok(None))[0];
    assert!(l.verdict == Verdict::Fail && l.message.contains("not found"));

    let (ca, leaf) = pair(1800, 90, &[SVC_NAME]);
    let empty = config("", service());
    let l = &tls(Some(&empty), Ok(Some(leaf.cert_pem.clone())))[0];
    assert!(l.verdict == Verdict::Fail && l.message.contains("holds no certificate"));

    let other = new_ca(SystemTime::now(), DAY * 1800).unwrap();
    let wrong = config(&other.cert_pem, service());
    let lines = tls(Some(&wrong), Ok(Some(leaf.cert_pem.clone())));
    let l = only(&lines);
    assert_eq!(l.verdict, Verdict::Fail);
    assert!(
        l.message
            .contains("does not verify for civic-mcp-webhook.civic-system.svc")
    );
    assert!(l.message.contains("UnknownIssuer"), "{}", l.message);

    // Signed by the right CA, for another name than the apiserver calls.
    let (ca2, elsewhere) = pair(1800, 90, &["other.civic-system.svc"]);
    let cfg = config(&ca2.cert_pem, service());
    let l = &tls(Some(&cfg), Ok(Some(elsewhere.cert_pem)))[0];
    assert_eq!(l.verdict, Verdict::Fail);
    assert!(
        l.message.contains("certificate not valid for name"),
        "{}",
        l.message
    );

    // The Secret cannot be read, or has no certificate: only a warning.
    let cfg = config(&ca.cert_pem, service());
    assert_eq!(verdicts(&tls(Some(&cfg), Ok(None))), [Verdict::Warn]);
    let l = &tls(Some(&cfg), Err("HTTP 403: forbidden".into()))[0];
    assert!(l.verdict == Verdict::Warn && l.message.contains("403"));
}

#[test]
fn webhook_tls_fails_within_seven_days_of_expiry_and_warns_within_thirty() {
    let (ca, leaf) = pair(20, 5, &[SVC_NAME]);
    let cfg = config(&ca.cert_pem, service());
    let lines = tls(Some(&cfg), Ok(Some(leaf.cert_pem)));
    assert_eq!(
        verdicts(&lines),
        [Verdict::Pass, Verdict::Fail, Verdict::Warn],
        "{lines:#?}"
    );
    assert!(lines[1].message.contains("expires in 4 days"));
}

// ---------------------------------------------------------------- webhook call

fn integration(ns: &str, name: &str, app: &str, ready: Option<(&str, &str)>) -> CivicIntegration {
    let mut v = json!({
        "apiVersion": "mcp.civic.com/v1alpha1", "kind": "CivicIntegration",
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": {
            "clientId": "client-123",
            "clientSecretRef": {"name": "civic-credentials", "key": "client-secret"},
            "bindings": [{
                "name": "support",
                "podSelector": {"matchLabels": {"app": app},
                                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]},
                "profileId": crate::testing::PROFILE_ID,
                "subject": {"serviceAccountToken": {"audience": "civic"}},
            }],
        },
    });
    if let Some((status, reason)) = ready {
        v["status"] = json!({"conditions": [{
            "type": "Ready", "status": status, "reason": reason,
            "message": "Secret \"civic-credentials\" not found",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]});
    }
    from(v)
}

#[test]
fn the_probe_targets_a_ready_binding_else_a_pod_no_binding_selects() {
    let list = [
        integration("a", "broken", "x", Some(("False", "SecretNotFound"))),
        integration("b", "civic", "agent", Some(("True", "Ready"))),
    ];
    let probe = plan_probe(&list, None);
    assert_eq!(probe.namespace, "b");
    assert_eq!(probe.binding.as_deref(), Some("civic/support"));
    assert_eq!(probe.labels["app"], "agent");
    assert_eq!(probe.labels["tier"], "web");
    assert_eq!(probe.labels[INJECT_LABEL], INJECT_ENABLED);
    let pod = probe_pod(&probe, "1234");
    assert_eq!(
        pod["metadata"]["annotations"][BINDING_ANNOTATION],
        "civic/support"
    );
    assert_eq!(pod["metadata"]["name"], "civic-operator-check-1234");

    let probe = plan_probe(&list, Some("a"));
    assert_eq!((probe.namespace.as_str(), probe.binding), ("a", None));
    assert_eq!(plan_probe(&[], None).namespace, "default");

    let hard: LabelSelector = from(json!({"matchExpressions": [
        {"key": "app", "operator": "NotIn", "values": ["x"]},
        {"key": "tier", "operator": "Gt", "values": ["1"]}]}));
    assert_eq!(labels_for(&hard), None);
}

fn answered(injected: bool, warnings: &[&str]) -> DryRun {
    let mut v = json!({"metadata": {"name": "p", "annotations": {}},
                       "spec": {"containers": [{"name": "check"}]}});
    if injected {
        v["metadata"]["annotations"][crate::annotations::INJECTED_ANNOTATION] =
            json!("civic/support");
        v["spec"]["initContainers"] =
            json!([{"name": SIDECAR_CONTAINER, "restartPolicy": "Always"}]);
    }
    DryRun::Admitted {
        pod: Box::new(from(v)),
        warnings: warnings.iter().map(|w| w.to_string()).collect(),
    }
}

#[test]
fn webhook_call_passes_when_injected_or_warned_about_no_match() {
    let targeted = Probe {
        namespace: "team".into(),
        labels: BTreeMap::new(),
        binding: Some("civic/support".into()),
    };
    let l = check_webhook_call("civic-system", &targeted, &answered(true, &[]));
    assert!(
        l.verdict == Verdict::Pass && l.message.contains("injected"),
        "{l:?}"
    );
    let untargeted = Probe {
        binding: None,
        ..targeted
    };
    let warning = "299 - \"no CivicIntegration binding in namespace team selects this pod\"";
    let l = check_webhook_call("civic-system", &untargeted, &answered(false, &[warning]));
    assert_eq!(l.verdict, Verdict::Pass);
}

#[test]
fn webhook_call_fails_when_not_called_refused_or_not_injected() {
    let targeted = Probe {
        namespace: "team".into(),
        labels: BTreeMap::new(),
        binding: Some("civic/support".into()),
    };
    let l = check_webhook_call("civic-system", &targeted, &answered(false, &[]));
    assert!(l.verdict == Verdict::Fail && l.message.contains("the webhook was not called"));
    let l = check_webhook_call(
        "civic-system",
        &targeted,
        &answered(false, &["something else"]),
    );
    assert!(l.verdict == Verdict::Fail && l.message.contains("something else"));
    let down = DryRun::Refused {
        code: 500,
        message: "Internal error occurred: failed calling webhook \"inject.mcp.civic.com\": connection refused".into(),
    };
    let l = check_webhook_call("civic-system", &targeted, &down);
    assert!(l.verdict == Verdict::Fail && l.message.contains("could not call the webhook"));
    let denied = DryRun::Refused {
        code: 400,
        message: "admission webhook \"inject.mcp.civic.com\" denied the request: no".into(),
    };
    let l = check_webhook_call("civic-system", &targeted, &denied);
    assert!(l.verdict == Verdict::Fail && l.message.contains("denied the request"));
    let untargeted = Probe {
        binding: None,
        ..targeted
    };
    let l = check_webhook_call("civic-system", &untargeted, &answered(false, &[]));
    assert!(l.verdict == Verdict::Fail && l.message.contains("not called"));
}

// ---------------------------------------------------------------- integrations

#[test]
fn integrations_pass_when_all_ready_and_fail_each_one_that_is_not() {
    let ok = integration("team", "civic", "agent", Some(("True", "Ready")));
    let l = &check_integrations(std::slice::from_ref(&ok), "in any namespace")[0];
    assert!(
        l.verdict == Verdict::Pass && l.message.contains("1 CivicIntegration(s) in any namespace")
    );

    let list = [
        ok,
        integration("team", "broken", "x", Some(("False", "SecretNotFound"))),
        integration("team", "new", "y", None),
    ];
    let lines = check_integrations(&list, "in any namespace");
    assert_eq!(verdicts(&lines), [Verdict::Fail, Verdict::Fail]);
    assert_eq!(
        lines[0].message,
        "team/broken: Ready=False SecretNotFound: Secret \"civic-credentials\" not found"
    );
    assert!(lines[1].message.contains("no Ready condition yet"));
    assert_eq!(
        lines[0].hint.as_deref(),
        Some("kubectl -n team describe civicintegration broken")
    );
    assert_eq!(verdicts(&check_integrations(&[], "x")), [Verdict::Warn]);
}

// ---------------------------------------------------------------- opted-in pods

fn opted(name: &str, app: &str, owner: Option<(&str, &str)>, injected: bool) -> Pod {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "team",
                     "labels": {"app": app, "tier": "web", INJECT_LABEL: INJECT_ENABLED}},
        "spec": {"containers": [{"name": "app"}]},
    });
    if let Some((kind, owner)) = owner {
        v["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind,
            "name": owner, "uid": "u", "controller": true}]);
    }
    if injected {
        v["metadata"]["annotations"] =
            json!({crate::annotations::INJECTED_ANNOTATION: "civic/support"});
        v["spec"]["initContainers"] = json!([{"name": SIDECAR_CONTAINER}]);
    }
    from(v)
}

fn replica_set(name: &str, deployment: &str) -> ReplicaSet {
    from(
        json!({"metadata": {"name": name, "namespace": "team", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "uid": "u",
         "controller": true}]}}),
    )
}

#[test]
fn opted_in_pods_pass_when_injected() {
    let list = [integration(
        "team",
        "civic",
        "agent",
        Some(("True", "Ready")),
    )];
    let pods = [opted("a", "agent", None, true)];
    let l = &check_opted_in(&pods, Some(&list), &[])[0];
    assert!(l.verdict == Verdict::Pass && l.message.contains("all 1 live"));
}

#[test]
fn opted_in_pods_without_the_sidecar_are_listed_with_the_restart_to_run() {
    let list = [integration(
        "team",
        "civic",
        "agent",
        Some(("True", "Ready")),
    )];
    let mut finished = opted("done", "agent", None, false);
    finished.status = Some(from(json!({"phase": "Succeeded"})));
    let pods = [
        opted("web-7d-a", "agent", Some(("ReplicaSet", "web-7d")), false),
        opted("web-7d-b", "agent", Some(("ReplicaSet", "web-7d")), false),
        opted("db-0", "agent", Some(("StatefulSet", "db")), false),
        opted("bare", "agent", None, false),
        opted("lonely", "nobody-selects", None, false),
        finished,
    ];
    let lines = check_opted_in(&pods, Some(&list), &[replica_set("web-7d", "web")]);
    let hints: Vec<&str> = lines.iter().filter_map(|l| l.hint.as_deref()).collect();
    assert_eq!(
        verdicts(&lines),
        [Verdict::Fail, Verdict::Fail, Verdict::Fail, Verdict::Warn],
        "{lines:#?}"
    );
    assert_eq!(
        hints[..3],
        [
            "delete and recreate them: kubectl -n team delete pod bare",
            "kubectl -n team rollout restart deployment/web",
            "kubectl -n team rollout restart statefulset/db",
        ]
    );
    assert!(
        lines[1]
            .message
            .contains("runs 2 opted-in pod(s) without the sidecar (web-7d-a, web-7d-b)")
    );
    assert!(lines[3].message.contains("team/lonely"));
    // Without the integrations, every such pod counts.
    let lines = check_opted_in(&pods[4..], None, &[]);
    assert_eq!(verdicts(&lines), [Verdict::Fail]);
}

// ---------------------------------------------------------------- sidecars

fn with_sidecar_status(status: Value) -> Pod {
    let mut p = opted("agent-1", "agent", None, true);
    p.status = Some(from(
        json!({"phase": "Running", "initContainerStatuses": [status]}),
    ));
    p
}

#[test]
fn sidecars_pass_when_ready() {
    let pods = [
        with_sidecar_status(
            json!({"name": SIDECAR_CONTAINER, "ready": true, "restartCount": 0,
                                    "image": "i", "imageID": ""}),
        ),
        opted("unscheduled", "agent", None, true),
    ];
    let l = &check_sidecars(&pods)[0];
    assert!(
        l.verdict == Verdict::Pass && l.message.contains("1 sidecar(s)"),
        "{l:?}"
    );
}

#[test]
fn sidecars_not_ready_fail_with_their_last_termination() {
    let pods = [with_sidecar_status(json!({
        "name": SIDECAR_CONTAINER, "ready": false, "restartCount": 4, "image": "i", "imageID": "",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                     "message": "token exchange refused\nsecond line"}},
    }))];
    let l = only(&check_sidecars(&pods)).clone();
    assert_eq!(l.verdict, Verdict::Fail);
    assert_eq!(
        l.message,
        "team/agent-1: civic-sidecar not ready (restarts 4; waiting: CrashLoopBackOff; last \
         terminated: Error (exit code 1): token exchange refused)"
    );
    let running = [with_sidecar_status(json!({
        "name": SIDECAR_CONTAINER, "ready": false, "restartCount": 0, "image": "i", "imageID": "",
        "state": {"running": {}},
    }))];
    assert!(
        check_sidecars(&running)[0]
            .message
            .contains("readiness probe failing")
    );
    assert_eq!(brief(&"x".repeat(300)).chars().count(), 201);
}

// ---------------------------------------------------------------- output

#[test]
fn output_exit_status_and_hints() {
    let pass = [Line::pass(CRD, "fine"), Line::warn(OPERATOR, "meh", "do x")];
    assert_eq!(exit_status(&pass), 0);
    let text = render_text("civic-system", &pass);
    assert!(text.contains("[ok  ] crd            fine\n"), "{text}");
    assert!(text.contains("[warn] operator       meh\n                      hint: do x\n"));
    assert!(text.ends_with("All checks passed (1 warning(s)).\n"));
    let fail = [Line::fail(SIDECARS, "bad", "fix")];
    assert_eq!(exit_status(&fail), 1);
    assert!(render_text("ns", &fail).ends_with("1 check(s) failed, 0 warning(s).\n"));
    let v: Value = serde_json::from_str(&render_json("ns", &fail)).unwrap();
    assert_eq!(
        v,
        json!({"namespace": "ns", "ok": false,
               "checks": [{"check": "sidecars", "verdict": "fail", "message": "bad", "hint": "fix"}]})
    );
}
