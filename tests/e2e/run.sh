#!/usr/bin/env bash
# The kind end-to-end suite (DESIGN.md §6 tier 7), one command:  tests/e2e/run.sh
#
# Creates a kind cluster, builds the operator, sidecar and fakes images and loads them, installs
# the chart, deploys the in-cluster fakes of Civic Auth and the hub (civic-fakes, TLS with a CA
# made here), applies a Secret, a CivicIntegration and a labelled Deployment whose container
# calls $CIVIC_MCP_URL with curl, and asserts:
#   1. the pod runs with exactly one injected sidecar, and the app gets CIVIC_MCP_URL;
#   2. initialize / tools/list / tools/call succeed through the sidecar with a profile-locked
#      token (the fake hub refuses any token whose civic_profile claim is not the binding's);
#   3. the integration is Ready and its status counts the bound pod;
#   4. a client-secret rotation is picked up without restarting the pod;
#   5. helm upgrade keeps injection working; helm uninstall leaves nothing behind but the
#      kept CRD.
#
# Needs docker, kind, kubectl, helm, openssl, jq. Settings (environment):
#   KIND_NODE_IMAGE   node image, e.g. kindest/node:v1.33.1 (default: kind's own default)
#   CLUSTER_NAME      kind cluster name (default civic-e2e)
#   KEEP_CLUSTER=1    do not delete the cluster at the end
#   SKIP_BUILD=1      use already built civic-mcp/*:e2e images
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/e2e/lib.sh
source tests/e2e/lib.sh

CLUSTER_NAME=${CLUSTER_NAME:-civic-e2e}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
OPERATOR_NS=civic-system
APP_NS=civic-e2e
FAKES_NS=civic-fakes
RELEASE=civic-mcp
TAG=e2e
CURL_IMAGE=curlimages/curl:8.11.1
CLIENT_ID=civic-e2e-client
PROFILE_ID=7c9e6679-7425-40de-944b-e07fc1f90ae7
APP_SA=mcp-client
E2E_PASSED=0
work=$(mktemp -d)

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    diagnostics
  fi
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

need docker kind kubectl helm openssl jq

log "cluster $CLUSTER_NAME ${KIND_NODE_IMAGE:-(kind default node image)}"
kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER_NAME" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null
kubectl version

log "images"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  for spec in operator:civic-operator sidecar:civic-sidecar civic-fakes:civic-fakes; do
    docker build -f "docker/${spec%%:*}.Dockerfile" -t "civic-mcp/${spec#*:}:$TAG" .
  done
fi
docker pull -q "$CURL_IMAGE" >/dev/null
for image in "civic-mcp/civic-operator:$TAG" "civic-mcp/civic-sidecar:$TAG" "civic-mcp/civic-fakes:$TAG" "$CURL_IMAGE"; do
  kind load docker-image --name "$CLUSTER_NAME" "$image"
done
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^civic-mcp/' >&2
pass "images built and loaded"

log "fakes: CA, certificate, Civic Auth + hub"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=civic e2e CA" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=civic-fakes" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
{
  printf 'subjectAltName='
  printf 'DNS:civic-auth.%s.svc,DNS:civic-auth.%s.svc.cluster.local,' "$FAKES_NS" "$FAKES_NS"
  printf 'DNS:civic-hub.%s.svc,DNS:civic-hub.%s.svc.cluster.local\n' "$FAKES_NS" "$FAKES_NS"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n'
} >"$work/ext.cnf"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -days 2 -extfile "$work/ext.cnf" -out "$work/tls.crt" 2>/dev/null
secret_v1="e2e-secret-v1-$(openssl rand -hex 12)"
secret_v2="e2e-secret-v2-$(openssl rand -hex 12)"
printf '%s\n' "$secret_v1" >"$work/client-secrets"

kubectl create namespace "$FAKES_NS"
kubectl -n "$FAKES_NS" create secret tls fakes-tls --cert="$work/tls.crt" --key="$work/tls.key"
kubectl -n "$FAKES_NS" create secret generic fakes-client --from-file=secrets="$work/client-secrets"
kubectl apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: civic-fakes, namespace: $FAKES_NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: civic-fakes}}
  template:
    metadata: {labels: {app: civic-fakes}}
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: fakes
          image: civic-mcp/civic-fakes:$TAG
          imagePullPolicy: Never
          args:
            - --tls-cert=/tls/tls.crt
            - --tls-key=/tls/tls.key
            - --client-id=$CLIENT_ID
            - --client-secret-file=/client/secrets
            - --profile-id=$PROFILE_ID
            - --audience=civic
          ports:
            - {name: auth, containerPort: 8443}
            - {name: hub, containerPort: 9443}
            - {name: control, containerPort: 8080}
          readinessProbe: {httpGet: {path: /healthz, port: control}, periodSeconds: 2}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: tls, mountPath: /tls, readOnly: true}
            - {name: client, mountPath: /client, readOnly: true}
      volumes:
        - {name: tls, secret: {secretName: fakes-tls}}
        - {name: client, secret: {secretName: fakes-client}}
---
apiVersion: v1
kind: Service
metadata: {name: civic-auth, namespace: $FAKES_NS}
spec:
  selector: {app: civic-fakes}
  ports: [{name: https, port: 443, targetPort: auth}]
---
apiVersion: v1
kind: Service
metadata: {name: civic-hub, namespace: $FAKES_NS}
spec:
  selector: {app: civic-fakes}
  ports: [{name: https, port: 443, targetPort: hub}]
---
apiVersion: v1
kind: Service
metadata: {name: civic-fakes-control, namespace: $FAKES_NS}
spec:
  selector: {app: civic-fakes}
  ports: [{name: http, port: 80, targetPort: control}]
EOF
kubectl -n "$FAKES_NS" rollout status deploy/civic-fakes --timeout=120s
pass "fakes running"

log "helm install"
helm install "$RELEASE" charts/civic-mcp --namespace "$OPERATOR_NS" --create-namespace \
  -f tests/e2e/values-e2e.yaml --set-file operator.tokenUrlCaBundle="$work/ca.crt" \
  --wait --timeout 5m
kubectl -n "$OPERATOR_NS" rollout status "deploy/$RELEASE" --timeout=120s
kubectl get crd civicintegrations.mcp.civic.com >/dev/null
pass "chart installed, operator replicas ready"

ca_bundle_filled() {
  [ -n "$(kubectl get mutatingwebhookconfiguration "$RELEASE" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]
}
retry 60 2 ca_bundle_filled || die "the operator did not fill the webhook's caBundle"
pass "webhook caBundle filled by the operator"

log "workload namespace: Secret, CA, CivicIntegration"
kubectl create namespace "$APP_NS"
kubectl -n "$APP_NS" create secret generic civic-credentials --from-literal=client-secret="$secret_v1"
kubectl -n "$APP_NS" create configmap civic-e2e-ca --from-file=ca.crt="$work/ca.crt"
kubectl apply -f - <<EOF
apiVersion: mcp.civic.com/v1alpha1
kind: CivicIntegration
metadata: {name: e2e, namespace: $APP_NS}
spec:
  clientId: $CLIENT_ID
  clientSecretRef: {name: civic-credentials, key: client-secret}
  hubUrl: https://civic-hub.$FAKES_NS.svc/hub/mcp
  tokenUrl: https://civic-auth.$FAKES_NS.svc/oauth/token
  bindings:
    - name: app
      podSelector: {matchLabels: {app: mcp-client}}
      profileId: $PROFILE_ID
      lockProfile: true
      subject:
        serviceAccountToken: {audience: civic, expirationSeconds: 3600}
EOF
kubectl -n "$APP_NS" wait civicintegration/e2e --for=condition=Ready --timeout=120s
pass "CivicIntegration Ready (credentials probed against the fake Civic Auth)"

log "labelled workload"
kubectl apply -f - <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: $APP_SA, namespace: $APP_NS}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mcp-client, namespace: $APP_NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: mcp-client}}
  template:
    metadata:
      labels: {app: mcp-client, mcp.civic.com/inject: enabled}
    spec:
      serviceAccountName: $APP_SA
      containers:
        - name: app
          image: $CURL_IMAGE
          imagePullPolicy: IfNotPresent
          command: ["sleep", "infinity"]
EOF
kubectl -n "$APP_NS" rollout status deploy/mcp-client --timeout=180s

# The running, not terminating, app pod.
app_pod() {
  kubectl -n "$APP_NS" get pods -l app=mcp-client -o json |
    jq -er '[.items[] | select(.metadata.deletionTimestamp == null and .status.phase == "Running")][0].metadata.name'
}
pod=$(app_pod)
sidecar_image="civic-mcp/civic-sidecar:$TAG"
pod_json=$(kubectl -n "$APP_NS" get pod "$pod" -o json)
sidecars=$(jq --arg img "$sidecar_image" '[(.spec.initContainers // [])[], .spec.containers[] | select(.image | endswith($img))] | length' <<<"$pod_json")
[ "$sidecars" = 1 ] || die "expected exactly one sidecar container in $pod, found $sidecars"
native=$(jq --arg img "$sidecar_image" '[(.spec.initContainers // [])[] | select((.image | endswith($img)) and .restartPolicy == "Always")] | length' <<<"$pod_json")
app_url=$(kubectl -n "$APP_NS" exec "$pod" -c app -- printenv CIVIC_MCP_URL)
[ "$app_url" = "http://127.0.0.1:8931/hub/mcp" ] || die "CIVIC_MCP_URL is '$app_url'"
# Volumes carrying the client secret (plain or projected) must be mounted only by the sidecar.
app_secret_mounts=$(jq '
  [.spec.volumes[]? | select(.secret.secretName == "civic-credentials"
     or ([.projected.sources[]? | .secret.name] | index("civic-credentials"))) | .name] as $secret_volumes
  | [.spec.containers[] | select(.name == "app") | (.volumeMounts // [])[] | .name
     | select(. as $n | $secret_volumes | index($n))] | length' <<<"$pod_json")
[ "$app_secret_mounts" = 0 ] || die "the app container mounts the client secret"
pass "pod $pod runs with one sidecar (native sidecar: $native), CIVIC_MCP_URL set, no secret in the app"

# One MCP session over the sidecar, from inside the app container: initialize, initialized,
# tools/list, tools/call whoami. Prints every response.
mcp_session() {
  kubectl -n "$APP_NS" exec -i "$(app_pod)" -c app -- sh -s <<'SH'
set -eu
post() { # $1 body, $2 extra header (optional)
  curl -sS --fail-with-body --max-time 20 -D - "$CIVIC_MCP_URL" \
    -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
    ${2:+-H "$2"} -d "$1"
}
init=$(post '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"civic-e2e","version":"1"}}}')
echo "$init"
sid=$(printf '%s\n' "$init" | tr -d '\r' | sed -n 's/^[Mm]cp-[Ss]ession-[Ii]d: *//p')
[ -n "$sid" ]
post '{"jsonrpc":"2.0","method":"notifications/initialized"}' "mcp-session-id: $sid" | head -1
post '{"jsonrpc":"2.0","id":2,"method":"tools/list"}' "mcp-session-id: $sid"
post '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"whoami","arguments":{}}}' "mcp-session-id: $sid"
SH
}

fakes_stats() {
  kubectl -n "$APP_NS" exec "$(app_pod)" -c app -- \
    curl -sS --fail --max-time 10 "http://civic-fakes-control.$FAKES_NS.svc/stats"
}
fakes_control() { # $1 method, $2 path, stdin: body
  kubectl -n "$APP_NS" exec -i "$(app_pod)" -c app -- \
    curl -sS --fail --max-time 10 -X "$1" --data-binary @- "http://civic-fakes-control.$FAKES_NS.svc$2"
}

check_mcp() {
  local out
  out=$(mcp_session) || { printf '%s\n' "$out" >&2; return 1; }
  grep -q '"serverInfo":{"name":"civic-fake-hub"' <<<"$out" || { echo "no initialize result" >&2; return 1; }
  grep -q '^HTTP/1.1 202' <<<"$out" || { echo "initialized notification not accepted" >&2; return 1; }
  grep -q '"name":"whoami"' <<<"$out" || { echo "tools/list lacks whoami" >&2; return 1; }
  grep -q "civic_profile[^,]*$PROFILE_ID" <<<"$out" || { echo "whoami shows no profile-locked token" >&2; return 1; }
  grep -q "system:serviceaccount:$APP_NS:$APP_SA" <<<"$out" || { echo "whoami shows another subject" >&2; return 1; }
}

log "MCP through the sidecar"
check_mcp || die "MCP calls through the sidecar failed"
stats=$(fakes_stats)
echo "fakes: $stats" >&2
[ "$(jq '.profile_locked_exchanges' <<<"$stats")" -ge 1 ] || die "no exchange asked for civic_profile"
[ "$(jq '.hub_with_profile_header' <<<"$stats")" -ge 4 ] || die "the hub did not get x-civic-profile-id on every call"
[ "$(jq '.hub_requests - .hub_authorized' <<<"$stats")" = 0 ] || die "the hub refused some requests"
pass "initialize, tools/list and tools/call succeeded with a profile-locked token"

log "status shows the bound pod"
bound_pods() {
  local status
  status=$(kubectl -n "$APP_NS" get civicintegration e2e -o json | jq -c '.status.bindings[]? | select(.name == "app")')
  [ "$(jq '.matchedPods' <<<"$status")" = 1 ] && [ "$(jq '.injectedPods' <<<"$status")" = 1 ]
}
retry 90 3 bound_pods || die "status.bindings does not count the injected pod"
pass "status: app binding matchedPods=1 injectedPods=1"

log "client-secret rotation without a pod restart"
pod_uid=$(kubectl -n "$APP_NS" get pod "$pod" -o jsonpath='{.metadata.uid}')
restarts() {
  kubectl -n "$APP_NS" get pod "$pod" -o json |
    jq '[(.status.initContainerStatuses // [])[], .status.containerStatuses[] | .restartCount] | add'
}
restarts_before=$(restarts)
printf '%s\n' "$secret_v2" | fakes_control PUT /client-secrets >/dev/null
kubectl -n "$APP_NS" create secret generic civic-credentials --from-literal=client-secret="$secret_v2" \
  --dry-run=client -o yaml | kubectl apply -f -
# The cached token stays valid; revoking it makes the next call exchange again, which works only
# with the new secret (the fake now refuses the old one). The kubelet syncs Secret volumes
# within about a minute.
printf 'revoke\n' | fakes_control POST /revoke >/dev/null
rotated() {
  check_mcp 2>/dev/null && [ "$(fakes_stats | jq '.issued_by_secret[0] // 0')" -ge 1 ]
}
retry 240 5 rotated || die "the sidecar did not pick up the rotated secret"
[ "$(kubectl -n "$APP_NS" get pod "$pod" -o jsonpath='{.metadata.uid}')" = "$pod_uid" ] || die "the pod was replaced"
[ "$(restarts)" = "$restarts_before" ] || die "containers restarted during the rotation"
kubectl -n "$APP_NS" wait civicintegration/e2e --for=condition=Ready --timeout=120s
pass "rotated secret in use by the same pod, no restart; integration still Ready"

log "helm upgrade"
helm upgrade "$RELEASE" charts/civic-mcp --namespace "$OPERATOR_NS" --reuse-values \
  --set operator.logLevel=debug --wait --timeout 5m
kubectl -n "$OPERATOR_NS" rollout status "deploy/$RELEASE" --timeout=120s
retry 60 2 ca_bundle_filled || die "caBundle lost in the upgrade"
kubectl -n "$APP_NS" rollout restart deploy/mcp-client
kubectl -n "$APP_NS" rollout status deploy/mcp-client --timeout=180s
retry 60 3 check_mcp || die "MCP calls failed after the upgrade"
pass "after helm upgrade a new pod is injected and calls the hub"

log "helm uninstall"
kubectl -n "$APP_NS" delete deploy/mcp-client --wait=true
helm uninstall "$RELEASE" --namespace "$OPERATOR_NS" --wait --timeout 5m
namespaced_kinds=$(kubectl api-resources --verbs=list --namespaced -o name | grep -v '^events')
leftovers() {
  local kind
  # Namespace content other than what Kubernetes puts in every namespace (Events age out).
  for kind in $namespaced_kinds; do
    kubectl -n "$OPERATOR_NS" get "$kind" -o name --ignore-not-found
  done | grep -v -e '^serviceaccount/default$' -e '^configmap/kube-root-ca.crt$' || true
  kubectl get mutatingwebhookconfigurations,validatingwebhookconfigurations,clusterroles,clusterrolebindings \
    -o name | grep civic || true
}
nothing_left() { [ -z "$(leftovers)" ]; }
retry 60 3 nothing_left || die "left behind after uninstall: $(leftovers | tr '\n' ' ')"
kubectl get crd civicintegrations.mcp.civic.com >/dev/null || die "the CRD was deleted (it is kept on purpose)"
pass "helm uninstall left nothing behind but the kept CRD"

kubectl delete crd civicintegrations.mcp.civic.com --wait=true
echo "e2e: $E2E_PASSED passed, 0 failed"
