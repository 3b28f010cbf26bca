#!/usr/bin/env bash
# The end-to-end suite on a real cluster, one command, the same assertions on both clusters:
#   tests/e2e/run.sh --local   the single-node Kubernetes of scripts/node.sh on this machine
#   tests/e2e/run.sh           a kind cluster (docker + kind), as the GitHub workflow runs it
#
# Builds the operator, sidecar, fakes and workload images (OCI archives with scripts/images.sh
# for --local, docker build for kind) and loads them, installs the chart, deploys the
# in-cluster fakes of Civic Auth and the hub (TLS with a CA made here), and asserts on running
# pods:
#   1. the chart's controller runs as two Ready pods, one of them the leader, and its webhook as
#      two Ready pods; CRD established;
#      the webhook's caBundle filled; `kubectl get civic` shows its columns;
#   2. a labelled Deployment (two app containers, an existing init container) in a namespace
#      that enforces the `restricted` Pod Security Standard gets one native sidecar; the app's
#      first MCP call (official Go SDK client, no retry) succeeds, and the container start times
#      show the sidecar started before the apps;
#   3. initialize / tools/list / tools/call through the sidecar to the fakes, with a token
#      locked to the binding's profile for the pod's own ServiceAccount (the fake Civic Auth
#      verifies the projected token against the cluster's JWKS when it can); the sidecar's and
#      the leader's metrics, scraped through the pod proxy, lint clean (promtool) and hold what
#      the chart's alerts read (no alert would fire);
#   4. a client-secret rotation is picked up with no container restart, and so is the kubelet's
#      refresh of the projected subject token (600 s, the shortest Kubernetes allows: refreshed
#      at 80 %, so this check waits about eight minutes, overlapped with the rest of the suite);
#   5. a Job with the sidecar completes; deleting a pod stops the app first, its open SSE stream
#      finishes through the sidecar, the sidecar stops last;
#   6. deleting the leader pod fails over and injection continues; with the controller scaled to
#      0 pods are still injected; a rolling restart of the webhook under a steady stream of
#      admissions loses none; with the webhook at 0, labelled pods are refused with a message and
#      unlabelled pods are not; back at 2, labelled pods are admitted again;
#   7. helm upgrade keeps injection working; helm uninstall leaves nothing but the kept CRD;
#   8. every pod's log, every Event and CivicIntegration is captured for the secret scan
#      (target/civic-test-logs/e2e-<cluster>/), and --local checks that no node process or pod
#      tried to reach an address outside the node.
#
# Needs kubectl, helm, openssl, jq; kind mode also docker and kind, --local root and the
# binaries of scripts/kube/build.sh. Settings (environment):
#   KIND_NODE_IMAGE   kind node image, e.g. kindest/node:v1.34.0 (default: kind's own)
#   CLUSTER_NAME      kind cluster name (default civic-e2e)
#   KEEP_CLUSTER=1    leave the cluster (kind) or node (--local) running at the end
#   SKIP_BUILD=1      use already built images
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/e2e/lib.sh
source tests/e2e/lib.sh

CLUSTER=kind
if [ "${1:-}" = --local ]; then
  CLUSTER=local
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--local]" >&2
  exit 2
fi
CLUSTER_NAME=${CLUSTER_NAME:-civic-e2e}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
OPERATOR_NS=civic-system
APP_NS=civic-e2e
FAKES_NS=civic-fakes
RELEASE=civic-mcp
TAG=e2e
WORKLOAD_IMAGE=civic-mcp/mcp-workload:$TAG
CLIENT_ID=civic-e2e-client
PROFILE_ID=7c9e6679-7425-40de-944b-e07fc1f90ae7
# The named profiles of the toolkits binding (several profiles in one pod).
SUPPORT_PROFILE_ID=5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11
BILLING_PROFILE_ID=c1f0e9d8-2b3a-4c5d-8e7f-a0b1c2d3e4f5
APP_SA=mcp-client
E2E_PASSED=0
CAPTURE_DIR=${CIVIC_E2E_CAPTURE_DIR:-target/civic-test-logs/e2e-$CLUSTER}
work=$(mktemp -d)

cleanup() {
  local rc=$?
  set +e
  capture "$CAPTURE_DIR"
  if [ "$rc" != 0 ]; then
    diagnostics
  fi
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    if [ "$CLUSTER" = local ]; then
      bash scripts/node.sh down >/dev/null 2>&1 || true
    else
      kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

need kubectl helm openssl jq
rm -rf "$CAPTURE_DIR"
mkdir -p "$CAPTURE_DIR"

# ---------------------------------------------------------------------------------------------
log "cluster: $CLUSTER"
if [ "$CLUSTER" = local ]; then
  up=$(bash scripts/node.sh up | tail -1)
  export "${up?}"
  [ -n "${KUBECONFIG:-}" ] || die "scripts/node.sh up printed no KUBECONFIG"
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    bash scripts/images.sh >&2
  fi
  bash scripts/node.sh import target/images/*.tar
else
  need docker kind
  kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  kind create cluster --name "$CLUSTER_NAME" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
  kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    for spec in operator:civic-operator sidecar:civic-sidecar civic-fakes:civic-fakes; do
      docker build -f "docker/${spec%%:*}.Dockerfile" -t "civic-mcp/${spec#*:}:$TAG" .
    done
    docker build -f tests/e2e/workload/Dockerfile -t "$WORKLOAD_IMAGE" tests/e2e/workload
  fi
  for image in civic-operator civic-sidecar civic-fakes mcp-workload; do
    kind load docker-image --name "$CLUSTER_NAME" "civic-mcp/$image:$TAG"
  done
fi
kubectl version
pass "cluster up, images loaded"

# ---------------------------------------------------------------------------------------------
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

# The cluster's service-account issuer and keys, as Civic Auth would be configured with them.
issuer=$(kubectl get --raw /.well-known/openid-configuration | jq -er .issuer)
kubectl get --raw /openid/v1/jwks >"$work/jwks.json"
jq -e '.keys | length >= 1' "$work/jwks.json" >/dev/null || die "the cluster serves no JWKS"

kubectl create namespace "$FAKES_NS"
kubectl -n "$FAKES_NS" create secret tls fakes-tls --cert="$work/tls.crt" --key="$work/tls.key"
kubectl -n "$FAKES_NS" create secret generic fakes-client --from-file=secrets="$work/client-secrets"
kubectl -n "$FAKES_NS" create configmap cluster-jwks --from-file=jwks.json="$work/jwks.json"
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
      automountServiceAccountToken: false
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
            - --extra-profile-id=$SUPPORT_PROFILE_ID,$BILLING_PROFILE_ID
            - --audience=civic
            # Verify subject tokens as Civic Auth would: the cluster's issuer and keys.
            - --jwks-file=/jwks/jwks.json
            - --issuer=$issuer
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
            - {name: jwks, mountPath: /jwks, readOnly: true}
      volumes:
        - {name: tls, secret: {secretName: fakes-tls}}
        - {name: client, secret: {secretName: fakes-client}}
        - {name: jwks, configMap: {name: cluster-jwks}}
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
pass "fakes running; Civic Auth trusts issuer $issuer with the cluster's $(jq '.keys | length' "$work/jwks.json") JWKS key(s)"

# The fakes' control port through the apiserver's service proxy: the same path on any cluster.
# The proxy may write into a keep-alive connection the fakes just closed ("error trying to reach
# service: ... broken pipe"); every control call is idempotent, so each is tried up to 3 times.
fakes_url="/api/v1/namespaces/$FAKES_NS/services/http:civic-fakes-control:80/proxy"
fakes_stats() {
  local attempt
  for attempt in 1 2 3; do
    kubectl get --raw "$fakes_url/stats" && return 0
    echo "fakes: GET /stats failed (attempt $attempt)" >&2
    sleep 1
  done
  return 1
}
fakes_control() { # $1 verb (create = POST, replace = PUT), $2 path, stdin: body
  local body attempt
  body=$(cat)
  for attempt in 1 2 3; do
    printf '%s\n' "$body" | kubectl "$1" --raw "$fakes_url$2" -f - && return 0
    echo "fakes: $1 $2 failed (attempt $attempt)" >&2
    sleep 1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
log "helm install"
helm install "$RELEASE" charts/civic-mcp --namespace "$OPERATOR_NS" --create-namespace \
  -f tests/e2e/values-e2e.yaml --set-file operator.tokenUrlCaBundle="$work/ca.crt" \
  --wait --timeout 5m
for d in controller webhook; do
  kubectl -n "$OPERATOR_NS" rollout status "deploy/$RELEASE-$d" --timeout=180s
done
kubectl wait crd/civicintegrations.mcp.civic.com --for=condition=Established --timeout=60s
operator_pods() { # $1 component: controller or webhook; the Ready ones that are not terminating
  kubectl -n "$OPERATOR_NS" get pods -l "app.kubernetes.io/component=$1" -o json |
    jq -r '[.items[] | select(.metadata.deletionTimestamp == null and
             ([.status.conditions[]? | select(.type == "Ready" and .status == "True")] | length) == 1)
            | .metadata.name] | sort | join(" ")'
}
all_pods() { # $1 component: every pod, terminating ones too
  kubectl -n "$OPERATOR_NS" get pods -l "app.kubernetes.io/component=$1" -o name | wc -l
}
leader() {
  kubectl -n "$OPERATOR_NS" get leases -o json |
    jq -r '[.items[] | select(.spec.holderIdentity != null and .spec.holderIdentity != "")][0].spec.holderIdentity // empty'
}
two_ready_one_leads() {
  local pods l
  pods=$(operator_pods controller)
  l=$(leader)
  [ "$(wc -w <<<"$pods")" = 2 ] && [ -n "$l" ] && grep -qw -- "$l" <<<"$pods" &&
    [ "$(operator_pods webhook | wc -w)" = 2 ]
}
retry 120 2 two_ready_one_leads || die "expected two Ready controller pods with the leader among them and two Ready webhook pods (controller: $(operator_pods controller); leader: $(leader); webhook: $(operator_pods webhook))"
ca_bundle_filled() {
  [ -n "$(kubectl get mutatingwebhookconfiguration "$RELEASE-$OPERATOR_NS" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]
}
retry 60 2 ca_bundle_filled || die "the operator did not fill the webhook's caBundle"
pass "chart installed: controller pods $(operator_pods controller) Ready, leader $(leader); webhook pods $(operator_pods webhook) Ready; CRD established; caBundle filled"

# ---------------------------------------------------------------------------------------------
log "workload namespace (restricted Pod Security): Secret, CA, CivicIntegration"
kubectl create namespace "$APP_NS"
kubectl label namespace "$APP_NS" pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/enforce-version=latest
kubectl -n "$APP_NS" create secret generic civic-credentials --from-literal=client-secret="$secret_v1"
kubectl -n "$APP_NS" create configmap civic-e2e-ca --from-file=ca.crt="$work/ca.crt"
# A ready Civic token for the static-token binding, straight from the fake into a Secret.
printf 'static-agent' | fakes_control create /mint |
  kubectl -n "$APP_NS" create secret generic civic-static-token --from-file=token=/dev/stdin
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
    - name: users
      podSelector: {matchLabels: {app: mcp-user}}
      profileId: $PROFILE_ID
      subject:
        requestHeader: {name: Authorization}
    - name: static
      podSelector: {matchLabels: {app: mcp-static}}
      profileId: $PROFILE_ID
      subject:
        civicTokenSecretRef: {name: civic-static-token, key: token}
    - name: jobs
      podSelector: {matchLabels: {app: mcp-job}}
      profileId: $PROFILE_ID
      subject:
        serviceAccountToken: {audience: civic, expirationSeconds: 600}
    - name: rotate
      podSelector: {matchLabels: {app: mcp-rotate}}
      profileId: $PROFILE_ID
      subject:
        serviceAccountToken: {audience: civic, expirationSeconds: 600}
    - name: toolkits
      podSelector: {matchLabels: {app: mcp-toolkits}}
      profileId: $PROFILE_ID
      profiles:
        - {name: support, profileId: $SUPPORT_PROFILE_ID}
        - {name: billing-tools, profileId: $BILLING_PROFILE_ID}
      subject:
        serviceAccountToken: {audience: civic, expirationSeconds: 3600}
EOF
kubectl -n "$APP_NS" wait civicintegration/e2e --for=condition=Ready --timeout=120s
# No `| head` under pipefail: kubectl could die of SIGPIPE and fail the step.
columns=$(kubectl -n "$APP_NS" get civic e2e)
columns=${columns%%$'\n'*}
for c in NAME READY BINDINGS AGE; do grep -qw "$c" <<<"$columns" || die "kubectl get civic lacks column $c: $columns"; done
pass "CivicIntegration Ready (credentials probed against the fake Civic Auth); columns: $columns"

# The kubelet refreshes a projected token only after 80 % of its lifetime, and 600 s is the
# shortest lifetime the apiserver accepts: this pod starts now, its check comes at the end.
restricted='{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}'
ROTATE_SUB=system:serviceaccount:$APP_NS:rotator
kubectl -n "$APP_NS" create serviceaccount rotator
kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: mcp-rotate, namespace: $APP_NS, labels: {app: mcp-rotate, mcp.civic.com/inject: enabled}}
spec:
  serviceAccountName: rotator
  terminationGracePeriodSeconds: 10
  containers:
    - {name: app, image: $WORKLOAD_IMAGE, imagePullPolicy: Never, args: [serve], securityContext: $restricted}
EOF

# ---------------------------------------------------------------------------------------------
log "labelled workload: two app containers and an init container"
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
      terminationGracePeriodSeconds: 10
      initContainers:
        - {name: prepare, image: $WORKLOAD_IMAGE, imagePullPolicy: Never, args: [help], securityContext: $restricted}
      containers:
        - {name: app, image: $WORKLOAD_IMAGE, imagePullPolicy: Never, args: [serve], securityContext: $restricted}
        - {name: helper, image: $WORKLOAD_IMAGE, imagePullPolicy: Never, args: [serve], securityContext: $restricted}
EOF
kubectl -n "$APP_NS" rollout status deploy/mcp-client --timeout=180s

# The running, not terminating, app pod.
app_pod() {
  kubectl -n "$APP_NS" get pods -l app=mcp-client -o json |
    jq -er '[.items[] | select(.metadata.deletionTimestamp == null and .status.phase == "Running")][0].metadata.name'
}
pod=$(app_pod)
pod_json=$(kubectl -n "$APP_NS" get pod "$pod" -o json)
init_names=$(jq -r '[(.spec.initContainers // [])[].name] | join(",")' <<<"$pod_json")
[ "$init_names" = "prepare,civic-sidecar" ] || die "init containers of $pod: $init_names (want prepare,civic-sidecar)"
[ "$(jq -r '.spec.initContainers[1].restartPolicy' <<<"$pod_json")" = Always ] || die "the sidecar is not a native sidecar"
[ "$(jq '[.spec.containers[] | select(.name == "civic-sidecar")] | length' <<<"$pod_json")" = 0 ] || die "a second sidecar"
for c in app helper; do
  url=$(jq -r --arg c "$c" '.spec.containers[] | select(.name == $c) | .env[]? | select(.name == "CIVIC_MCP_URL") | .value' <<<"$pod_json")
  [ "$url" = "http://127.0.0.1:8931/hub/mcp" ] || die "$c: CIVIC_MCP_URL is '$url'"
done
app_secret_mounts=$(jq '
  [.spec.volumes[]? | select(.secret.secretName == "civic-credentials"
     or ([.projected.sources[]? | .secret.name] | index("civic-credentials"))) | .name] as $secret_volumes
  | [.spec.containers[] | (.volumeMounts // [])[] | .name
     | select(. as $n | $secret_volumes | index($n))] | length' <<<"$pod_json")
[ "$app_secret_mounts" = 0 ] || die "an app container mounts the client secret"
# The ServiceAccount plugin's API token (a projected token with no audience): the apps have it,
# the sidecar must not (an empty volume covers that path in it).
api_token_mounts() {
  jq --arg c "$1" '
    [.spec.volumes[]? | select([.projected.sources[]? | .serviceAccountToken | select(. != null and .audience == null)] | length > 0) | .name] as $api
    | [(.spec.initContainers // [])[], .spec.containers[] | select(.name == $c) | (.volumeMounts // [])[] | select(.name as $n | $api | index($n))] | length' <<<"$pod_json"
}
[ "$(api_token_mounts app)" = 1 ] || die "the app lacks the pod's API token: the ServiceAccount plugin did not run"
[ "$(api_token_mounts civic-sidecar)" = 0 ] || die "the sidecar mounts the pod's Kubernetes API token"
started() { # container name -> startedAt (running)
  jq -r --arg c "$1" '[(.status.initContainerStatuses // [])[], .status.containerStatuses[] | select(.name == $c)][0].state.running.startedAt // empty' <<<"$pod_json"
}
t_sidecar=$(started civic-sidecar)
t_app=$(started app)
{ [ -n "$t_sidecar" ] && [ -n "$t_app" ]; } || die "start times missing: sidecar '$t_sidecar' app '$t_app'"
[[ ! "$t_app" < "$t_sidecar" ]] || die "the app ($t_app) started before the sidecar ($t_sidecar)"
for c in app helper; do
  first=$(kubectl -n "$APP_NS" logs "$pod" -c "$c" | json_event first_call)
  [ "$(jq -r .ok <<<"$first")" = true ] || die "the $c container's first MCP call failed: $first"
done
restarts() {
  kubectl -n "$APP_NS" get pod "$pod" -o json |
    jq '[(.status.initContainerStatuses // [])[], .status.containerStatuses[] | .restartCount] | add'
}
[ "$(restarts)" = 0 ] || die "containers of $pod restarted"
pass "pod $pod: native sidecar after the init container, sidecar started $t_sidecar, app $t_app; both apps' first MCP call succeeded with no retry; 0 restarts; restricted PSS admitted it; the apps have the pod's API token, the sidecar none"

# ---------------------------------------------------------------------------------------------
# check_mcp [POD]: one SDK session through the sidecar, from the app container of POD (default:
# the running app pod), with a profile-locked token for the app's ServiceAccount; says on
# stderr what was wrong.
check_mcp() {
  local out target=${1:-}
  [ -n "$target" ] || target=$(app_pod) || return 1
  out=$(kubectl -n "$APP_NS" exec "$target" -c app -- /mcp-workload call) || { printf '%s\n' "$out" >&2; return 1; }
  [ "$(jq -r .ok <<<"$out")" = true ] || { echo "call failed: $out" >&2; return 1; }
  jq -e '.tools | index("whoami")' <<<"$out" >/dev/null || { echo "tools/list lacks whoami: $out" >&2; return 1; }
  grep -q "$PROFILE_ID" <<<"$(jq -r .whoami <<<"$out")" || { echo "whoami shows no profile-locked token: $out" >&2; return 1; }
  grep -q "system:serviceaccount:$APP_NS:$APP_SA" <<<"$(jq -r .whoami <<<"$out")" || { echo "whoami shows another subject: $out" >&2; return 1; }
}
log "MCP through the sidecar"
check_mcp || die "MCP calls through the sidecar failed"
stats=$(fakes_stats)
echo "fakes: $stats" >&2
[ "$(jq '.profile_locked_exchanges' <<<"$stats")" -ge 1 ] || die "no exchange asked for civic_profile"
[ "$(jq '.hub_requests - .hub_authorized' <<<"$stats")" = 0 ] || die "the hub refused some requests"
[ "$(jq '.subject_verified_with_jwks // 0' <<<"$stats")" -ge 1 ] || die "no subject token was verified against the cluster's JWKS"
pass "initialize, tools/list and tools/call succeeded with a profile-locked token for system:serviceaccount:$APP_NS:$APP_SA"

log "status shows the bound pod"
bound_pods() {
  local status
  status=$(kubectl -n "$APP_NS" get civicintegration e2e -o json | jq -c '.status.bindings[]? | select(.name == "app")')
  [ "$(jq '.matchedPods' <<<"$status")" = 1 ] && [ "$(jq '.injectedPods' <<<"$status")" = 1 ]
}
retry 90 3 bound_pods || die "status.bindings does not count the injected pod"
pass "status: app binding matchedPods=1 injectedPods=1"

log "metrics the chart's alerts read, scraped from the pods as Prometheus would"
# Through the apiserver's pod proxy: the same path on any cluster.
scrape() { kubectl get --raw "/api/v1/namespaces/$1/pods/$2:$3/proxy/metrics"; }
sample() { # $1 exposition, $2 series as exposed: prints its value
  awk -v s="$2" '$1 == s { print $2 }' <<<"$1"
}
sidecar_metrics=$(scrape "$APP_NS" "$pod" 8932)
operator_metrics=$(scrape "$OPERATOR_NS" "$(leader)" 8080)
if command -v promtool >/dev/null; then
  for m in sidecar operator; do
    var="${m}_metrics"
    promtool check metrics <<<"${!var}" || die "promtool check metrics finds problems in the $m's exposition"
  done
else
  echo "promtool not installed: exposition lint skipped (scripts/setup.sh installs it)" >&2
fi
grep -qE '^civic_sidecar_exchanges_total\{profile="default",result="ok"\} [1-9]' <<<"$sidecar_metrics" ||
  die "the sidecar counts no successful exchange: $(grep exchanges_total <<<"$sidecar_metrics")"
expiry=$(sample "$sidecar_metrics" civic_sidecar_token_expiry_seconds)
awk -v e="$expiry" 'BEGIN { exit !(e > 120) }' || die "token expiry $expiry s: CivicSidecarTokenExpiring would fire"
series="{integration=\"e2e\",integration_namespace=\"$APP_NS\"}"
[ "$(sample "$operator_metrics" "civic_operator_integration_ready$series")" = 1 ] ||
  die "civic_operator_integration_ready$series is not 1 on the leader"
[ "$(sample "$operator_metrics" "civic_operator_opted_in_pods_without_sidecar$series")" = 0 ] ||
  die "civic_operator_opted_in_pods_without_sidecar$series is not 0 on the leader"
pass "sidecar and leader expositions lint clean; exchanges ok, token expiry ${expiry}s, integration Ready=1 with 0 pods lacking the sidecar: no alert would fire"

# ---------------------------------------------------------------------------------------------
log "client-secret rotation without a restart"
pod_uid=$(kubectl -n "$APP_NS" get pod "$pod" -o jsonpath='{.metadata.uid}')
printf '%s\n' "$secret_v2" | fakes_control replace /client-secrets >/dev/null
kubectl -n "$APP_NS" create secret generic civic-credentials --from-literal=client-secret="$secret_v2" \
  --dry-run=client -o yaml | kubectl apply -f -
# The cached token stays valid; revoking it makes the next call exchange again, which works only
# with the new secret (the fake now refuses the old one).
printf 'revoke\n' | fakes_control create /revoke >/dev/null
rotated() {
  check_mcp 2>/dev/null && [ "$(fakes_stats | jq '.issued_by_secret[0] // 0')" -ge 1 ]
}
rotation_start=$SECONDS
retry 240 5 rotated || die "the sidecar did not pick up the rotated secret"
[ "$(kubectl -n "$APP_NS" get pod "$pod" -o jsonpath='{.metadata.uid}')" = "$pod_uid" ] || die "the pod was replaced"
[ "$(restarts)" = 0 ] || die "containers restarted during the rotation"
kubectl -n "$APP_NS" wait civicintegration/e2e --for=condition=Ready --timeout=120s
pass "rotated secret in use by the same pod after $((SECONDS - rotation_start))s, restartCount 0 on every container"

# ---------------------------------------------------------------------------------------------
log "a Job with the sidecar completes"
kubectl apply -f - <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: mcp-job, namespace: $APP_NS}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {app: mcp-job, mcp.civic.com/inject: enabled}
    spec:
      serviceAccountName: $APP_SA
      restartPolicy: Never
      containers:
        - {name: job, image: $WORKLOAD_IMAGE, imagePullPolicy: Never, args: [once], securityContext: $restricted}
EOF
kubectl -n "$APP_NS" wait job/mcp-job --for=condition=Complete --timeout=180s ||
  die "the Job did not complete (a sidecar keeping it running?)"
job_pod=$(kubectl -n "$APP_NS" get pods -l job-name=mcp-job -o jsonpath='{.items[0].metadata.name}')
job_result=$(kubectl -n "$APP_NS" logs "$job_pod" -c job | json_event once)
[ "$(jq -r .ok <<<"$job_result")" = true ] || die "the Job's MCP call failed: $job_result"
pass "Job $job_pod with the native sidecar completed, its MCP call succeeded"

# ---------------------------------------------------------------------------------------------
log "per-user and static-token bindings"
kubectl -n "$APP_NS" create serviceaccount alice
# A user's token as the app would hold it (here a token of the cluster's issuer for Civic).
printf 'Bearer %s' "$(kubectl -n "$APP_NS" create token alice --audience civic --duration 1h)" |
  kubectl -n "$APP_NS" create secret generic alice-token --from-file=authorization=/dev/stdin
kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: mcp-user, namespace: $APP_NS, labels: {app: mcp-user, mcp.civic.com/inject: enabled}}
spec:
  serviceAccountName: $APP_SA
  containers:
    - name: app
      image: $WORKLOAD_IMAGE
      imagePullPolicy: Never
      args: [serve, --header-file, Authorization=/user/authorization]
      securityContext: $restricted
      volumeMounts: [{name: user, mountPath: /user, readOnly: true}]
  volumes: [{name: user, secret: {secretName: alice-token}}]
---
apiVersion: v1
kind: Pod
metadata: {name: mcp-static, namespace: $APP_NS, labels: {app: mcp-static, mcp.civic.com/inject: enabled}}
spec:
  serviceAccountName: $APP_SA
  terminationGracePeriodSeconds: 10
  containers:
    # Keeps a countdown call (8 progress events over 4 s on one SSE stream) open, for the
    # deletion check below.
    - {name: app, image: $WORKLOAD_IMAGE, imagePullPolicy: Never, args: [serve, --stream, "8"], securityContext: $restricted}
EOF
kubectl -n "$APP_NS" wait pod/mcp-user pod/mcp-static --for=condition=Ready --timeout=180s
user_first=$(kubectl -n "$APP_NS" logs mcp-user -c app | json_event first_call)
[ "$(jq -r .ok <<<"$user_first")" = true ] || die "per-user first call failed: $user_first"
grep -q "system:serviceaccount:$APP_NS:alice" <<<"$(jq -r .whoami <<<"$user_first")" || die "per-user call ran as another subject: $user_first"
no_user=$(kubectl -n "$APP_NS" exec mcp-user -c app -- /mcp-workload call) && die "a per-user call without the user's header succeeded: $no_user"
static_first=$(kubectl -n "$APP_NS" logs mcp-static -c app | json_event first_call)
[ "$(jq -r .ok <<<"$static_first")" = true ] || die "static-token first call failed: $static_first"
grep -q 'static-agent' <<<"$(jq -r .whoami <<<"$static_first")" || die "static-token call ran as another subject: $static_first"
pass "per-user binding: the call runs as the header's user (alice) and is refused without it; static-token binding: runs as static-agent"

log "several profiles in one pod: each through its own URL with its own locked token"
TOOLKITS_SUB=system:serviceaccount:$APP_NS:toolkits
kubectl -n "$APP_NS" create serviceaccount toolkits
kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: mcp-toolkits, namespace: $APP_NS, labels: {app: mcp-toolkits, mcp.civic.com/inject: enabled}}
spec:
  serviceAccountName: toolkits
  terminationGracePeriodSeconds: 10
  containers:
    - {name: app, image: $WORKLOAD_IMAGE, imagePullPolicy: Never, args: [serve], securityContext: $restricted}
EOF
kubectl -n "$APP_NS" wait pod/mcp-toolkits --for=condition=Ready --timeout=180s
toolkits_env=$(kubectl -n "$APP_NS" get pod mcp-toolkits -o json | jq -c '[.spec.containers[] | select(.name == "app") | .env[] | {(.name): .value}] | add')
for want in CIVIC_MCP_URL CIVIC_MCP_URL_SUPPORT CIVIC_MCP_URL_BILLING_TOOLS; do
  jq -e --arg k "$want" 'has($k)' <<<"$toolkits_env" >/dev/null || die "the app container lacks $want: $toolkits_env"
done
for pair in ":$PROFILE_ID" "support:$SUPPORT_PROFILE_ID" "billing-tools:$BILLING_PROFILE_ID"; do
  name=${pair%%:*} uuid=${pair#*:}
  out=$(kubectl -n "$APP_NS" exec mcp-toolkits -c app -- /mcp-workload call ${name:+--profile "$name"}) ||
    die "the call to profile '${name:-default}' failed: $out"
  grep -q "\"civic_profile\":\"$uuid\"" <<<"$(jq -r .whoami <<<"$out")" ||
    die "profile '${name:-default}' reached the hub with another profile's token: $out"
  grep -q "$TOOLKITS_SUB" <<<"$(jq -r .whoami <<<"$out")" || die "profile '${name:-default}' ran as another subject: $out"
done
unknown=$(kubectl -n "$APP_NS" exec mcp-toolkits -c app -- /mcp-workload call --url http://127.0.0.1:8931/profiles/sales/hub/mcp) &&
  die "a profile the binding does not list was served: $unknown"
by_profile=$(fakes_stats | jq -c '.issued_by_profile')
for uuid in "$SUPPORT_PROFILE_ID" "$BILLING_PROFILE_ID"; do
  jq -e --arg p "$uuid" '.[$p] >= 1' <<<"$by_profile" >/dev/null || die "no exchange locked to $uuid: $by_profile"
done
[ "$(fakes_stats | jq '.hub_profile_header_mismatch')" = 0 ] || die "a hub request's profile header did not match its token"
pass "one pod, three profiles: /hub/mcp, \$CIVIC_MCP_URL_SUPPORT and \$CIVIC_MCP_URL_BILLING_TOOLS each reached the hub as $TOOLKITS_SUB with a token locked to its own profile (exchanges by profile: $by_profile); an unlisted profile is refused"

log "pod deletion: the app stops first, its open stream finishes, the sidecar stops last"
streaming() { [ -n "$(kubectl -n "$APP_NS" logs mcp-static -c app | json_event streaming)" ]; }
retry 60 1 streaming || die "mcp-static never opened its countdown stream"
kubectl -n "$APP_NS" get pod mcp-static -o json --watch-only >"$work/deletion.jsonl" &
watcher=$!
sleep 1
kubectl -n "$APP_NS" delete pod mcp-static --wait=true --timeout=60s
sleep 1
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
final=$(jq -cs '[.[] | select([.status.containerStatuses[]?, .status.initContainerStatuses[]? | .state.terminated] | all(. != null))] | last' "$work/deletion.jsonl")
[ "$final" != null ] || die "no status with every container terminated was seen while deleting mcp-static"
app_end=$(jq -r '.status.containerStatuses[] | select(.name == "app") | .state.terminated | "\(.exitCode) \(.finishedAt)"' <<<"$final")
sidecar_end=$(jq -r '.status.initContainerStatuses[] | select(.name == "civic-sidecar") | .state.terminated | "\(.exitCode) \(.finishedAt)"' <<<"$final")
# What the app wrote to its termination log: the countdown call open at SIGTERM, carried to its end.
stream_end=$(jq -r '.status.containerStatuses[] | select(.name == "app") | .state.terminated.message // empty' <<<"$final")
jq -e --argjson steps 8 '.event == "stream" and .ok and .open_at_signal and .progress == $steps' <<<"$stream_end" >/dev/null ||
  die "the app's open stream did not finish through the sidecar: ${stream_end:-no termination message}"
[ "${app_end%% *}" = 0 ] || die "the app did not exit cleanly on SIGTERM: $app_end"
[[ ! "${sidecar_end#* }" < "${app_end#* }" ]] || die "the sidecar ($sidecar_end) stopped before the app ($app_end)"
pass "deleted mcp-static: the countdown stream open at SIGTERM got all 8 events and its result ($(jq -r .result <<<"$stream_end")), app exited 0 at ${app_end#* }, sidecar stopped at ${sidecar_end#* } (exit ${sidecar_end%% *})"

# ---------------------------------------------------------------------------------------------
labelled_pod() { # $1 name, $2 labelled (true/false)
  local labels="{app: probe}"
  [ "$2" = true ] && labels="{app: mcp-client, mcp.civic.com/inject: enabled}"
  kubectl apply --dry-run=server -o json -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $APP_NS, labels: $labels}
spec:
  serviceAccountName: $APP_SA
  containers:
    - {name: app, image: $WORKLOAD_IMAGE, imagePullPolicy: Never, args: [serve], securityContext: $restricted}
EOF
}
injected() { labelled_pod "$1" true 2>/dev/null | jq -e '[.spec.initContainers[]? | select(.name == "civic-sidecar")] | length == 1' >/dev/null; }

log "operator faults: leader failover, controller down, webhook rollout under admissions, webhook at zero, back"
old_leader=$(leader)
kubectl -n "$OPERATOR_NS" delete pod "$old_leader" --wait=false
new_leader_elected() { local l; l=$(leader); [ -n "$l" ] && [ "$l" != "$old_leader" ]; }
retry 120 2 new_leader_elected || die "no new leader after deleting $old_leader"
retry 60 2 injected probe-failover || die "injection stopped after the failover"
pass "leader $old_leader deleted: $(leader) took over, injection continues"

# The controller is not on the admission path: with it gone, pods are injected at the first try.
kubectl -n "$OPERATOR_NS" scale "deploy/$RELEASE-controller" --replicas=0
no_controller() { [ "$(all_pods controller)" = 0 ]; }
retry 120 2 no_controller || die "controller pods still there after scaling to 0"
injected probe-no-controller || die "a labelled pod was not injected with the controller down"
pass "controller at 0: labelled pods still injected"

# A rolling restart of the webhook under a steady stream of admissions loses none: each replica
# reports not ready on SIGTERM and keeps admitting through its drain while kube-proxy moves on.
kubectl -n "$OPERATOR_NS" rollout restart "deploy/$RELEASE-webhook"
admitted=0
roll_start=$SECONDS
webhook_rolled() {
  kubectl -n "$OPERATOR_NS" rollout status "deploy/$RELEASE-webhook" --timeout=1s >/dev/null 2>&1 &&
    [ "$(all_pods webhook)" = 2 ]
}
until webhook_rolled && [ "$admitted" -ge 10 ]; do
  ((SECONDS - roll_start < 240)) || die "the webhook rollout did not finish in 240 s"
  if out=$(labelled_pod "probe-roll-$admitted" true 2>&1) &&
    jq -e '[.spec.initContainers[]? | select(.name == "civic-sidecar")] | length == 1' <<<"$out" >/dev/null; then
    admitted=$((admitted + 1))
  else
    die "an admission failed during the webhook rollout (after $admitted): $(head -c 400 <<<"$out")"
  fi
done
pass "webhook rolled (now $(operator_pods webhook)) in $((SECONDS - roll_start)) s: $admitted admissions during it, none lost"

kubectl -n "$OPERATOR_NS" scale "deploy/$RELEASE-webhook" --replicas=0
no_webhook() { [ "$(all_pods webhook)" = 0 ]; }
retry 120 2 no_webhook || die "webhook pods still there after scaling to 0"
refused=$(labelled_pod probe-down true 2>&1) && die "a labelled pod was admitted with no webhook: $refused"
grep -q 'inject.mcp.civic.com' <<<"$refused" || die "the refusal does not name the webhook: $refused"
labelled_pod probe-plain false >/dev/null || die "an unlabelled pod was refused with the webhook down"
pass "webhook at 0: labelled pod refused ($(head -c 160 <<<"$refused")…), unlabelled pod admitted"
for d in controller webhook; do
  kubectl -n "$OPERATOR_NS" scale "deploy/$RELEASE-$d" --replicas=2
done
for d in controller webhook; do
  kubectl -n "$OPERATOR_NS" rollout status "deploy/$RELEASE-$d" --timeout=180s
done
retry 90 2 injected probe-back || die "labelled pods are not admitted after scaling back"
retry 120 2 two_ready_one_leads || die "no leader after scaling back"
pass "operator back at 2 + 2 (controller $(operator_pods controller), leader $(leader); webhook $(operator_pods webhook)): labelled pods injected again"

# ---------------------------------------------------------------------------------------------
log "helm upgrade"
helm upgrade "$RELEASE" charts/civic-mcp --namespace "$OPERATOR_NS" --reuse-values \
  --set operator.logLevel=debug --wait --timeout 5m
for d in controller webhook; do
  kubectl -n "$OPERATOR_NS" rollout status "deploy/$RELEASE-$d" --timeout=180s
done
retry 60 2 ca_bundle_filled || die "caBundle lost in the upgrade"
# A rolling update under calls: every call made into a pod that was not already on its way out
# must succeed (a pod picked just before its deletion is skipped, not counted).
kubectl -n "$APP_NS" rollout restart deploy/mcp-client
calls_ok=0
calls_skipped=0
rolled() { kubectl -n "$APP_NS" rollout status deploy/mcp-client --timeout=1s >/dev/null 2>&1; }
roll_start=$SECONDS
until rolled && [ "$calls_ok" -ge 3 ]; do
  ((SECONDS - roll_start < 240)) || die "the rolling update did not finish in 240 s"
  target=$(app_pod) || { sleep 1; continue; }
  if why=$(check_mcp "$target" 2>&1); then
    calls_ok=$((calls_ok + 1))
  elif [ -n "$(kubectl -n "$APP_NS" get pod "$target" -o jsonpath='{.metadata.deletionTimestamp}' --ignore-not-found)" ] ||
    ! kubectl -n "$APP_NS" get pod "$target" >/dev/null 2>&1; then
    calls_skipped=$((calls_skipped + 1))
  else
    die "a call failed during the rolling update, into $target, which was not terminating: $why"
  fi
done
check_mcp || die "MCP calls failed after the upgrade"
pass "after helm upgrade, a rolling update under calls: $calls_ok calls succeeded, 0 failed ($calls_skipped into pods already terminating skipped); the new pod is injected and calls the hub"

# ---------------------------------------------------------------------------------------------
log "subject-token rotation by the kubelet (mcp-rotate, 600 s token)"
rotate_iats() { fakes_stats | jq -c --arg s "$ROTATE_SUB" '.subject_issued_at[$s] // []'; }
rotate_calls=0
# A call every 15 s: each must succeed, and once the kubelet has rewritten the token file the
# sidecar's next exchange presents the new token (the fake Civic Auth verifies it again).
subject_rotated() {
  local out
  out=$(kubectl -n "$APP_NS" exec mcp-rotate -c app -- /mcp-workload call) ||
    die "a call through mcp-rotate failed while waiting for the rotation: $out"
  grep -q "$ROTATE_SUB" <<<"$(jq -r .whoami <<<"$out")" || die "mcp-rotate called as another subject: $out"
  rotate_calls=$((rotate_calls + 1))
  [ "$(rotate_iats | jq length)" -ge 2 ]
}
rotate_pod_json=$(kubectl -n "$APP_NS" get pod mcp-rotate -o json)
rotate_started=$(jq -r '.status.startTime' <<<"$rotate_pod_json")
rotate_age=$(($(date +%s) - $(date -d "$rotate_started" +%s)))
# Refresh due at 480 s (less up to 10 s of jitter), seen at the kubelet's next volume sync.
retry $((720 - rotate_age)) 15 subject_rotated ||
  die "the sidecar never exchanged a refreshed subject token (issue times seen: $(rotate_iats))"
iats=$(rotate_iats)
[ "$(kubectl -n "$APP_NS" get pod mcp-rotate -o json | jq '[.status.initContainerStatuses[]?, .status.containerStatuses[] | .restartCount] | add')" = 0 ] ||
  die "containers of mcp-rotate restarted"
pass "subject token refreshed by the kubelet after $(jq '.[1] - .[0]' <<<"$iats") s and used by the sidecar's next exchange (issue times $iats), $rotate_calls calls all succeeded, 0 restarts"

log "helm uninstall"
capture "$CAPTURE_DIR"
kubectl -n "$APP_NS" delete deploy/mcp-client job/mcp-job pod/mcp-user pod/mcp-rotate pod/mcp-toolkits --wait=true
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

if [ "$CLUSTER" = local ]; then
  bash scripts/node.sh egress-check || die "something on the node tried to reach an outside address"
  pass "egress guard: no packet from the node or its pods to any address outside it"
fi
echo "e2e ($CLUSTER): $E2E_PASSED passed, 0 failed"
