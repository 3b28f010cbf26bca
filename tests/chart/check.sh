#!/usr/bin/env bash
# Chart checks (docs/architecture.md §6 tier 5), run by scripts/test.sh:
#   - the chart's CRD copy equals crds/ (the CRD generated from the operator's types);
#   - helm lint --strict and helm template with the default values and every tests/chart/values-*.yaml;
#   - every rendered manifest passes kubernetes-validate --strict for Kubernetes 1.33, and the
#     chart's invariants (tests/chart/invariants.py);
#   - the default render equals tests/chart/golden/default.yaml (UPDATE_GOLDEN=1 rewrites it);
#   - values.schema.json rejects wrong-typed and out-of-range values;
#   - shellcheck over the e2e and chart scripts.
# Needs helm (scripts/install-helm.sh) and the venv from scripts/setup.sh
# ($CIVIC_VENV, default ~/.cache/civic-mcp/venv, with kubernetes-validate).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cache/civic-mcp/bin:$PATH"

chart=charts/civic-mcp
crd_src=crds/civicintegrations.mcp.civic.com.yaml
crd_copy=$chart/files/civicintegrations.mcp.civic.com.yaml
venv=${CIVIC_VENV:-$HOME/.cache/civic-mcp/venv}
kube_version=1.33.0
release=civic-mcp
namespace=civic-system
golden=tests/chart/golden/default.yaml
# Kinds of CRDs the chart may render that kubernetes-validate has no schema for.
foreign_kinds='^(Certificate|Issuer|ServiceMonitor|PodMonitor|PrometheusRule)$'

command -v helm >/dev/null || { echo "chart: helm not found (run scripts/install-helm.sh)" >&2; exit 1; }
[ -x "$venv/bin/kubernetes-validate" ] || { echo "chart: $venv/bin/kubernetes-validate not found (run scripts/setup.sh)" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0
passed=0
ok() { passed=$((passed + 1)); echo "chart: ok: $*"; }
bad() { failures=$((failures + 1)); echo "chart: FAILED: $*" >&2; }

# 1. The CRD copy the chart templates from must be the generated one.
if cmp -s "$crd_src" "$crd_copy"; then
  ok "CRD copy matches $crd_src"
else
  bad "$crd_copy drifted from $crd_src: run 'cp $crd_src $crd_copy'"
fi

# 2. Lint and render every values set; validate and check invariants on each render.
render() { # $1 out file, rest: extra helm args
  local out=$1; shift
  helm template "$release" "$chart" --namespace "$namespace" --kube-version "$kube_version" "$@" >"$out"
}
validate() { # $1 render, $2 label
  local log="$work/validate.log"
  if ! "$venv/bin/kubernetes-validate" --strict -k "$kube_version" "$1" >"$log" 2>&1; then
    cat "$log" >&2; bad "$2: kubernetes-validate --strict"; return
  fi
  # A kind without a schema is only a warning there; accept it only for the known CRD kinds.
  local unknown
  unknown=$(sed -n "s/.*Couldn't find schema for kind \([A-Za-z]*\) .*/\1/p" "$log" | grep -Ev "$foreign_kinds" || true)
  if [ -n "$unknown" ]; then
    bad "$2: no schema for kinds: $unknown"; return
  fi
  if grep -q "failed\|ERROR" "$log"; then cat "$log" >&2; bad "$2: kubernetes-validate reported errors"; return; fi
  ok "$2: $(grep -c 'passed for resource' "$log") manifests pass kubernetes-validate --strict for $kube_version"
}
check_values() { # $1 label, rest: helm args
  local label=$1; shift
  local out="$work/$label.yaml"
  if helm lint --strict "$chart" --namespace "$namespace" "$@" >"$work/lint.log" 2>&1; then
    ok "$label: helm lint --strict"
  else
    cat "$work/lint.log" >&2; bad "$label: helm lint --strict"
  fi
  if ! render "$out" "$@" 2>"$work/render.err"; then
    cat "$work/render.err" >&2; bad "$label: helm template"; return
  fi
  ok "$label: helm template"
  validate "$out" "$label"
  if "$venv/bin/python" tests/chart/invariants.py "$out" "$namespace" "$crd_src"; then
    ok "$label: invariants"
  else
    bad "$label: invariants"
  fi
}

check_values default
for f in tests/chart/values-*.yaml; do
  check_values "$(basename "$f" .yaml)" -f "$f"
done

# 3. Golden file of the default render.
render "$work/golden.yaml"
if [ "${UPDATE_GOLDEN:-0}" = 1 ]; then
  mkdir -p "$(dirname "$golden")"
  cp "$work/golden.yaml" "$golden"
  ok "golden file rewritten: $golden"
elif diff -u "$golden" "$work/golden.yaml" >"$work/golden.diff"; then
  ok "default render matches $golden"
else
  head -100 "$work/golden.diff" >&2
  bad "default render differs from $golden (UPDATE_GOLDEN=1 tests/chart/check.sh to accept)"
fi

# 4. The schema rejects wrong values (each must fail with a schema error naming the value).
reject() { # $1 value path shown in the error, rest: --set args
  local key=$1; shift
  if render "$work/reject.yaml" "$@" 2>"$work/reject.err"; then
    bad "values.schema.json accepted $*"
  elif grep -q "schema" "$work/reject.err" && grep -q "$key" "$work/reject.err"; then
    ok "schema rejects $*"
  else
    cat "$work/reject.err" >&2; bad "$* failed, but not by the schema"
  fi
}
reject webhook.replicas --set webhook.replicas=two
reject webhook.replicas --set webhook.replicas=0
reject controller.replicas --set controller.replicas=0
reject webhook.drainPeriod --set webhook.drainPeriod=soon
reject webhook.timeoutSeconds --set webhook.timeoutSeconds=10
reject webhook.failurePolicy --set webhook.failurePolicy=Retry
reject webhook.certManager.enabled --set-string webhook.certManager.enabled=yes
reject sidecar.port --set sidecar.port=70000
reject sidecar.port --set-string sidecar.port=8931
reject sidecar.resources --set-json 'sidecar.resources={"requests":{"memory":["16Mi"]}}'
reject operator.logFormat --set operator.logFormat=xml
reject image.pullPolicy --set image.pullPolicy=Sometimes
reject podAntiAffinity --set podAntiAffinity=maybe
reject unknownValue --set unknownValue=1
# ...and accepts the forms the documentation allows.
if render "$work/accept.yaml" --set-string podDisruptionBudget.minAvailable=50% --set webhook.timeoutSeconds=1; then
  ok "schema accepts a percentage minAvailable and timeoutSeconds=1"
else
  bad "schema rejected valid values"
fi

reject policy.allowedTokenHosts --set 'policy.allowedTokenHosts={https://auth.civic.com}'
reject policy.allowedSidecarImages --set 'policy.allowedSidecarImages={a b}'
reject controller.secretNamespaces --set 'controller.secretNamespaces={Team_A}'
reject metrics.prometheusRule.requestErrorRatio --set metrics.prometheusRule.requestErrorRatio=lots
reject metrics.prometheusRule.sidecarSelector --set-string 'metrics.prometheusRule.sidecarSelector=job="a"} or vector(1)'
reject metrics.dashboard.namespace --set metrics.dashboard.namespace=Monitoring

# 5. Two releases never share an object: the same release name in two namespaces (the second
# with its CRD managed by the first), and two release names in one namespace. Only the CRD, which
# the cluster holds once, may appear in both.
collisions() { # $1 $2 renders
  "$venv/bin/python" - "$1" "$2" <<'PY'
import sys, yaml
def keys(path):
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
            for d in yaml.safe_load_all(open(path)) if d}
shared = sorted(k for k in keys(sys.argv[1]) & keys(sys.argv[2]) if k[0] != "CustomResourceDefinition")
for k in shared:
    print("shared:", *k)
sys.exit(1 if shared else 0)
PY
}
helm template "$release" "$chart" --namespace team-a --kube-version "$kube_version" >"$work/rel-a.yaml"
helm template "$release" "$chart" --namespace team-b --kube-version "$kube_version" --set crds.install=false >"$work/rel-b.yaml"
helm template other "$chart" --namespace team-a --kube-version "$kube_version" --set crds.install=false >"$work/rel-c.yaml"
if collisions "$work/rel-a.yaml" "$work/rel-b.yaml" && collisions "$work/rel-a.yaml" "$work/rel-c.yaml"; then
  ok "two releases (same name in two namespaces; two names in one namespace) share no object"
else
  bad "two releases would collide"
fi
# The check itself must be able to fail: one release rendered twice shares everything.
if collisions "$work/rel-a.yaml" "$work/rel-a.yaml" >/dev/null; then
  bad "the collision check passed a release against itself"
fi

# 6. Scripts.
scripts=(tests/chart/*.sh)
[ -d tests/e2e ] && scripts+=(tests/e2e/*.sh)
scripts+=(tests/monitoring/*.sh)
if shellcheck -x "${scripts[@]}"; then
  ok "shellcheck ${scripts[*]}"
else
  bad "shellcheck"
fi

echo "chart: $passed passed, $failures failed"
[ "$failures" = 0 ]
