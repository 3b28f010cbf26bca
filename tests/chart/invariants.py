"""Checks what every render of the civic-mcp chart must satisfy, whatever the values.

Usage: python invariants.py RENDER.yaml RELEASE_NAMESPACE CRD_SOURCE.yaml
Exits non-zero with one line per violation. The golden file pins the default render exactly;
this pins the properties that must hold for every values file (tests/chart/values-*.yaml).
"""

import sys

import yaml

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}
SYSTEM_NAMESPACES = {"kube-system", "kube-public", "kube-node-lease"}
INJECT_LABEL = {"mcp.civic.com/inject": "enabled"}
CLUSTER_SCOPED = {
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ClusterRole",
    "ClusterRoleBinding",
}


def main(render_path, namespace, crd_path):
    docs = [d for d in yaml.safe_load_all(open(render_path)) if d]
    errors = []

    def fail(msg):
        errors.append(msg)

    def objs(kind):
        return [d for d in docs if d.get("kind") == kind]

    def one(kind):
        found = objs(kind)
        if len(found) != 1:
            fail(f"expected exactly one {kind}, found {len(found)}")
            return {}
        return found[0]

    names = {}
    for d in docs:
        key = (d["kind"], d["metadata"]["name"])
        if key in names:
            fail(f"duplicate object {key}")
        names[key] = d
        ns = d["metadata"].get("namespace")
        if d["kind"] in CLUSTER_SCOPED:
            if ns:
                fail(f"cluster-scoped {key} has a namespace")
        elif ns != namespace:
            fail(f"{key} is in namespace {ns!r}, not the release namespace {namespace!r}")

    deploy = one("Deployment")
    spec = deploy.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail("pod securityContext is not restricted (runAsNonRoot, seccomp RuntimeDefault)")
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    env = {}
    ports = {}
    for c in containers:
        sc = c.get("securityContext", {})
        for k, v in RESTRICTED_CONTAINER.items():
            if sc.get(k) is not v:
                fail(f"container {c['name']}: securityContext.{k} must be {v}")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            fail(f"container {c['name']}: capabilities must drop ALL and add nothing")
        if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"container {c['name']}: seccompProfile must be RuntimeDefault")
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in c:
                fail(f"container {c['name']}: no {probe}")
        if "resources" not in c:
            fail(f"container {c['name']}: no resources")
        for e in c.get("env", []):
            env[e["name"]] = e.get("value")
        for p in c.get("ports", []):
            ports[p["name"]] = p["containerPort"]
    selector = spec.get("selector", {}).get("matchLabels", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        fail("Deployment selector does not match its pod labels")

    sa = pod.get("serviceAccountName")
    if ("ServiceAccount", sa) not in names:
        fail(f"Deployment's ServiceAccount {sa!r} is not rendered")
    bound = any(
        s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == namespace
        for b in objs("ClusterRoleBinding") + objs("RoleBinding")
        for s in b.get("subjects", [])
    )
    if not bound:
        fail(f"no (Cluster)RoleBinding binds ServiceAccount {sa!r}")

    lease = env.get("CIVIC_OPERATOR_LEASE_NAME")
    if ("Lease", lease) not in names:
        fail(f"the Lease the operator uses ({lease!r}) is not rendered, so uninstall would leave it")

    replicas = spec.get("replicas", 1)
    pdbs = objs("PodDisruptionBudget")
    if replicas == 1 and pdbs:
        fail("a PodDisruptionBudget with one replica blocks every node drain")

    services = {s["metadata"]["name"]: s for s in objs("Service")}
    for s in services.values():
        if any(s["spec"]["selector"].get(k) != v for k, v in selector.items()):
            fail(f"Service {s['metadata']['name']} does not select the operator pods")
        for p in s["spec"]["ports"]:
            if p["targetPort"] not in ports:
                fail(f"Service {s['metadata']['name']} targets unknown port {p['targetPort']!r}")

    mwc = one("MutatingWebhookConfiguration")
    if env.get("CIVIC_OPERATOR_WEBHOOK_CONFIG_NAME") != mwc.get("metadata", {}).get("name"):
        fail("CIVIC_OPERATOR_WEBHOOK_CONFIG_NAME does not name the rendered webhook configuration")
    for wh in mwc.get("webhooks", []):
        n = wh.get("name")
        if not 1 <= wh.get("timeoutSeconds", 10) <= 5:
            fail(f"webhook {n}: timeoutSeconds must be 1-5")
        if wh.get("reinvocationPolicy") != "IfNeeded":
            fail(f"webhook {n}: reinvocationPolicy must be IfNeeded")
        if wh.get("sideEffects") != "None":
            fail(f"webhook {n}: sideEffects must be None")
        if wh.get("admissionReviewVersions") != ["v1"]:
            fail(f"webhook {n}: admissionReviewVersions must be [v1]")
        if wh.get("failurePolicy") not in ("Fail", "Ignore"):
            fail(f"webhook {n}: failurePolicy missing")
        if wh.get("objectSelector", {}).get("matchLabels") != INJECT_LABEL:
            fail(f"webhook {n}: objectSelector must be exactly {INJECT_LABEL}")
        excluded = set()
        for expr in wh.get("namespaceSelector", {}).get("matchExpressions", []):
            if expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn":
                excluded |= set(expr["values"])
        missing = (SYSTEM_NAMESPACES | {namespace}) - excluded
        if missing:
            fail(f"webhook {n}: namespaces not excluded: {sorted(missing)}")
        for rule in wh.get("rules", []):
            if rule.get("resources") != ["pods"] or rule.get("operations") != ["CREATE"]:
                fail(f"webhook {n}: rules must be pods CREATE only, got {rule}")
        svc = wh.get("clientConfig", {}).get("service", {})
        target = services.get(svc.get("name"))
        if not target or svc.get("namespace") != namespace:
            fail(f"webhook {n}: clientConfig.service {svc} is not a rendered Service")
        elif not any(p["port"] == svc.get("port", 443) and p["targetPort"] == "webhook" for p in target["spec"]["ports"]):
            fail(f"webhook {n}: Service port {svc.get('port', 443)} does not reach the webhook port")
        if env.get("CIVIC_OPERATOR_WEBHOOK_SERVICE_NAME") != svc.get("name"):
            fail("CIVIC_OPERATOR_WEBHOOK_SERVICE_NAME does not name the webhook Service")

    mode = env.get("CIVIC_OPERATOR_WEBHOOK_CERT_MODE")
    annotations = mwc.get("metadata", {}).get("annotations") or {}
    if mode == "self-managed":
        secret = env.get("CIVIC_OPERATOR_WEBHOOK_CERT_SECRET")
        if ("Secret", secret) not in names:
            fail(f"self-managed TLS: Secret {secret!r} is not rendered, so uninstall would leave it")
        if "cert-manager.io/inject-ca-from" in annotations or objs("Certificate"):
            fail("self-managed TLS renders cert-manager objects")
    elif mode == "cert-manager":
        cert = one("Certificate")
        ref = f"{namespace}/{cert.get('metadata', {}).get('name')}"
        if annotations.get("cert-manager.io/inject-ca-from") != ref:
            fail(f"inject-ca-from must be {ref}")
        secret = cert.get("spec", {}).get("secretName")
        vols = [v.get("secret", {}).get("secretName") for v in pod.get("volumes", [])]
        if secret not in vols:
            fail(f"the Certificate's Secret {secret!r} is not mounted into the operator")
        svc_name = env.get("CIVIC_OPERATOR_WEBHOOK_SERVICE_NAME")
        if f"{svc_name}.{namespace}.svc" not in cert.get("spec", {}).get("dnsNames", []):
            fail("the Certificate does not cover the webhook Service's DNS name")
    else:
        fail(f"CIVIC_OPERATOR_WEBHOOK_CERT_MODE is {mode!r}")

    for key in ("CIVIC_OPERATOR_SIDECAR_IMAGE", "CIVIC_OPERATOR_SIDECAR_PORT", "CIVIC_OPERATOR_SIDECAR_RESOURCES"):
        if not env.get(key):
            fail(f"operator env {key} is not set")

    crds = objs("CustomResourceDefinition")
    if crds:
        crd = crds[0]
        want = yaml.safe_load(open(crd_path))
        got = {k: v for k, v in crd.items() if k != "metadata"}
        if got != {k: v for k, v in want.items() if k != "metadata"} or crd["metadata"]["name"] != want["metadata"]["name"]:
            fail(f"the rendered CRD differs from {crd_path}")

    for e in errors:
        print(f"invariant violated in {render_path}: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
