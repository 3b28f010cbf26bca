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


def served_secrets_rbac(d):
    """The namespaced Secret mode's Role (secrets get/list/watch, nothing else) or its binding:
    the only objects rendered outside the release namespace (controller.secretNamespaces)."""
    if d["kind"] == "RoleBinding":
        return d["roleRef"]["name"] == d["metadata"]["name"] and d["metadata"]["name"].endswith("-secrets")
    if d["kind"] != "Role" or not d["metadata"]["name"].endswith("-secrets"):
        return False
    return d.get("rules") == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}
    ]


def dashboard_elsewhere(d):
    """The dashboard ConfigMap, which metrics.dashboard.namespace may put where Grafana looks:
    nothing but the dashboard's JSON."""
    return (
        d["kind"] == "ConfigMap"
        and d["metadata"]["name"].endswith("-dashboard")
        and list(d.get("data", {})) == ["civic-mcp.json"]
    )


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
        if (key, d["metadata"].get("namespace")) in names:
            fail(f"duplicate object {key}")
        names[(key, d["metadata"].get("namespace"))] = d
        ns = d["metadata"].get("namespace")
        if d["kind"] in CLUSTER_SCOPED:
            if ns:
                fail(f"cluster-scoped {key} has a namespace")
        elif ns != namespace and not served_secrets_rbac(d) and not dashboard_elsewhere(d):
            fail(f"{key} is in namespace {ns!r}, not the release namespace {namespace!r}")

    # Two Deployments: the controller and the webhook, apart so that one cannot take the other down.
    deployments = {}
    for deploy in objs("Deployment"):
        component = deploy["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if component in deployments:
            fail(f"two Deployments of component {component!r}")
        deployments[component] = deploy
    if set(deployments) != {"controller", "webhook"}:
        fail(f"expected a controller and a webhook Deployment, found components {sorted(map(str, deployments))}")
        deployments = {k: deployments.get(k, {}) for k in ("controller", "webhook")}

    envs, portses, pods, selectors = {}, {}, {}, {}
    for component, deploy in deployments.items():
        spec = deploy.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        pods[component] = pod
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"{component}: pod securityContext is not restricted (runAsNonRoot, seccomp RuntimeDefault)")
        containers = pod.get("containers", []) + pod.get("initContainers", [])
        env = envs.setdefault(component, {})
        ports = portses.setdefault(component, {})
        for c in containers:
            sc = c.get("securityContext", {})
            for k, v in RESTRICTED_CONTAINER.items():
                if sc.get(k) is not v:
                    fail(f"{component} container {c['name']}: securityContext.{k} must be {v}")
            if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
                fail(f"{component} container {c['name']}: capabilities must drop ALL and add nothing")
            if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                fail(f"{component} container {c['name']}: seccompProfile must be RuntimeDefault")
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    fail(f"{component} container {c['name']}: no {probe}")
            if "limits" not in c.get("resources", {}) or "memory" not in c["resources"]["limits"]:
                fail(f"{component} container {c['name']}: no memory limit")
            for e in c.get("env", []):
                env[e["name"]] = e.get("value")
            for p in c.get("ports", []):
                ports[p["name"]] = p["containerPort"]
        selector = spec.get("selector", {}).get("matchLabels", {})
        selectors[component] = selector
        labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            fail(f"{component}: Deployment selector does not match its pod labels")
        sa = pod.get("serviceAccountName")
        if (("ServiceAccount", sa), namespace) not in names:
            fail(f"{component}: Deployment's ServiceAccount {sa!r} is not rendered")
        bound = any(
            s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == namespace
            for b in objs("ClusterRoleBinding") + objs("RoleBinding")
            for s in b.get("subjects", [])
        )
        if not bound:
            fail(f"{component}: no (Cluster)RoleBinding binds ServiceAccount {sa!r}")

    if envs["controller"].get("CIVIC_OPERATOR_WEBHOOK_ENABLED") != "false":
        fail("the controller Deployment also serves the webhook")
    if envs["webhook"].get("CIVIC_OPERATOR_CONTROLLER_ENABLED") != "false":
        fail("the webhook Deployment also runs the controller")
    if "webhook" in portses["controller"]:
        fail("the controller exposes a webhook port")
    lease = envs["controller"].get("CIVIC_OPERATOR_LEASE_NAME")
    if (("Lease", lease), namespace) not in names:
        fail(f"the Lease the controller uses ({lease!r}) is not rendered, so uninstall would leave it")
    # A terminating webhook pod drains, then gives admissions in flight 10 s, inside its grace.
    drain = envs["webhook"].get("CIVIC_OPERATOR_DRAIN_PERIOD") or "5s"
    drain_s = float(drain[:-1]) if drain.endswith("s") and not drain.endswith("ms") else None
    grace = pods["webhook"].get("terminationGracePeriodSeconds", 30)
    if drain_s is None or drain_s + 10 >= grace:
        fail(f"webhook drain {drain!r} + 10 s does not fit in terminationGracePeriodSeconds {grace}")

    env, ports, pod = envs["webhook"], portses["webhook"], pods["webhook"]
    webhook_replicas = deployments["webhook"].get("spec", {}).get("replicas", 1)
    pdbs = objs("PodDisruptionBudget")
    if webhook_replicas == 1 and pdbs:
        fail("a PodDisruptionBudget with one replica blocks every node drain")
    for pdb in pdbs:
        if pdb["spec"]["selector"].get("matchLabels") != selectors["webhook"]:
            fail(f"PodDisruptionBudget {pdb['metadata']['name']} does not select the webhook pods")

    def selects(service, component):
        return all(deployments[component].get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}).get(k) == v
                   for k, v in service["spec"]["selector"].items())

    services = {s["metadata"]["name"]: s for s in objs("Service")}
    for s in services.values():
        served = [c for c in deployments if selects(s, c)]
        if not served:
            fail(f"Service {s['metadata']['name']} selects no operator pods")
        for c in served:
            for p in s["spec"]["ports"]:
                if p["targetPort"] not in portses[c]:
                    fail(f"Service {s['metadata']['name']} targets port {p['targetPort']!r}, which {c} pods lack")

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
        elif selects(target, "controller"):
            fail(f"webhook {n}: its Service also sends admissions to the controller pods")
        elif not any(p["port"] == svc.get("port", 443) and p["targetPort"] == "webhook" for p in target["spec"]["ports"]):
            fail(f"webhook {n}: Service port {svc.get('port', 443)} does not reach the webhook port")
        if env.get("CIVIC_OPERATOR_WEBHOOK_SERVICE_NAME") != svc.get("name"):
            fail("CIVIC_OPERATOR_WEBHOOK_SERVICE_NAME does not name the webhook Service")

    mode = env.get("CIVIC_OPERATOR_WEBHOOK_CERT_MODE")
    annotations = mwc.get("metadata", {}).get("annotations") or {}
    if mode == "self-managed":
        secret = env.get("CIVIC_OPERATOR_WEBHOOK_CERT_SECRET")
        if (("Secret", secret), namespace) not in names:
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
