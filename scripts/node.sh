#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for the node test tier and for contributors:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, CoreDNS,
# containerd + runc + the CNI bridge, all built from pinned sources by scripts/kube/build.sh.
#
#   scripts/node.sh up       start the node (idempotent); prints KUBECONFIG=<path> last
#   scripts/node.sh down     stop every process it started (by PID) and remove everything it made
#   scripts/node.sh status   what runs, node readiness, and the egress guard's counter
#   scripts/node.sh import <archive>...   import OCI image archives into the node's containerd
#   scripts/node.sh egress-check          fails when any node process or pod tried to reach an
#                                         address outside the node (see "Isolation" below)
#
# Isolation. Every component runs in a network namespace of its own (`civic-node`) that holds only
# loopback, the pods' bridge and a point-to-point link to the host (for kubectl). Its default
# route leads into a dead-end veth, and an iptables chain counts and drops every packet leaving
# for anything but loopback, the pod network, the service network or a reply to the host: so the
# node cannot reach a registry, a metadata endpoint or outside DNS, and any attempt is counted.
# `up` proves the counter works (it sends one probe to a TEST-NET address and sees it counted)
# and then zeroes it; `egress-check` fails when it is not zero.
#
# Needs root, the binaries from scripts/kube/build.sh, iproute2, iptables, openssl, curl.
# Settings: CIVIC_NODE_DIR (default /var/lib/civic-node; etcd and containerd live there).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/kube/env.sh
source scripts/kube/env.sh

NODE_DIR=${CIVIC_NODE_DIR:-/var/lib/civic-node}
NETNS=civic-node
NODE_NAME=civic-node
POD_CIDR=10.250.0.0/24
NODE_IP=10.250.0.1 # the bridge: pods' gateway, the node's InternalIP, cluster DNS
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SERVICE_IP=10.96.0.1
HOST_LINK_HOST=10.250.1.1 # host end of the host <-> node link
HOST_LINK_NODE=10.250.1.2 # node end: the apiserver as the host's kubectl sees it
APISERVER_PORT=6443
CLUSTER_DOMAIN=cluster.local
BRIDGE=civic0
HOST_VETH=civic-host
NODE_VETH=civic-link
VOID=civic-void
EGRESS_CHAIN=CIVIC-EGRESS
CGROUP_NAME=civic-node
# The host-wide paths the kubelet, the CNI library and containerd's shims (their sockets) write
# whatever their flags say.
HOST_PATHS=(/var/log/pods /var/log/containers /var/lib/cni /var/lib/kubelet /run/containerd)
# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns)

log() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

in_node() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
pid_file() { printf '%s/run/%s.pid' "$NODE_DIR" "$1"; }
log_file() { printf '%s/logs/%s.log' "$NODE_DIR" "$1"; }
kubeconfig_host() { printf '%s/kubeconfig' "$NODE_DIR"; }

running() {
  local pid
  pid=$(cat "$(pid_file "$1")" 2>/dev/null) || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# launch NAME CMD...: starts CMD in the node's network namespace and its tracking cgroup, in the
# background with its own log, and records its PID.
launch() {
  local name=$1
  shift
  running "$name" && { log "$name already running"; return; }
  local cg
  cg=$(tracking_cgroup)
  # setsid: the node outlives this script; the subshell joins the cgroup before exec, so every
  # child (containerd's shims too) is found again by `down`.
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec nsenter --net="$0" -- "$@"' \
    "/run/netns/$NETNS" "$cg" "$@" </dev/null >>"$(log_file "$name")" 2>&1 &
  echo $! >"$(pid_file "$name")"
  log "$name started (pid $!)"
}

tracking_cgroup() { printf '/sys/fs/cgroup/pids/%s' "$CGROUP_NAME"; }

# wait_for WHAT SECONDS CMD...: polls CMD every half second.
wait_for() {
  local what=$1 limit=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start >= limit)); then
      die "$what not ready after ${limit}s (logs in $NODE_DIR/logs)"
    fi
    sleep 0.5
  done
  log "$what ready after $((SECONDS - start))s"
}

admin_curl() {
  curl -sS --fail --max-time 5 --cacert "$NODE_DIR/pki/ca.crt" \
    -H "Authorization: Bearer $(token_of admin)" "https://$HOST_LINK_NODE:$APISERVER_PORT$1"
}
# The token of a component by its id (column 3 of the apiserver's token file).
token_of() { awk -F, -v id="$1" '$3 == id { print $1 }' "$NODE_DIR/pki/tokens.csv"; }
kubectl_node() { KUBECONFIG="$(kubeconfig_host)" kubectl "$@"; }

# ---------------------------------------------------------------------------------------------
# up

network_up() {
  if [[ -e /run/netns/$NETNS ]]; then
    return
  fi
  log "network namespace $NETNS"
  ip netns add "$NETNS"
  in_node ip link set lo up
  # IPv4 only beyond loopback: no interface of the node gets an IPv6 address, so nothing can
  # be routed out over IPv6 and the kernel sends no neighbour discovery (which the guard would
  # otherwise count). Pods' own link-local IPv6 stays on the bridge, which routes nothing.
  in_node sysctl -q -w net.ipv6.conf.default.disable_ipv6=1
  # The pods' bridge, made here so the node's address exists before the kubelet and the
  # apiserver bind to it; the CNI bridge plugin adopts it.
  in_node ip link add "$BRIDGE" type bridge
  in_node ip addr add "$NODE_IP/24" dev "$BRIDGE"
  in_node ip link set "$BRIDGE" up
  ip link add "$HOST_VETH" type veth peer name "$NODE_VETH" netns "$NETNS"
  ip addr add "$HOST_LINK_HOST/30" dev "$HOST_VETH"
  ip link set "$HOST_VETH" up
  in_node ip addr add "$HOST_LINK_NODE/30" dev "$NODE_VETH"
  in_node ip link set "$NODE_VETH" up
  # Everything else leads into a dead end, where the egress chain counts it.
  in_node ip link add "$VOID" type veth peer name "$VOID-end"
  in_node ip link set "$VOID" up
  in_node ip link set "$VOID-end" up
  in_node ip route add default dev "$VOID"
  # Per network namespace: forwarding for pods, and bridged pod traffic through iptables so
  # service addresses work pod to pod.
  in_node sysctl -q -w net.ipv4.ip_forward=1
  in_node sysctl -q -w net.bridge.bridge-nf-call-iptables=1
  in_node sysctl -q -w net.bridge.bridge-nf-call-ip6tables=0
  egress_guard_up
}

egress_guard_up() {
  local ipt
  for ipt in iptables ip6tables; do
    in_node "$ipt" -w -N "$EGRESS_CHAIN"
    in_node "$ipt" -w -A "$EGRESS_CHAIN" -o lo -j RETURN
    in_node "$ipt" -w -A "$EGRESS_CHAIN" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    if [[ $ipt == iptables ]]; then
      in_node "$ipt" -w -A "$EGRESS_CHAIN" -d "$POD_CIDR" -j RETURN
      in_node "$ipt" -w -A "$EGRESS_CHAIN" -d "$SERVICE_CIDR" -j RETURN
    fi
    in_node "$ipt" -w -A "$EGRESS_CHAIN" -j DROP
    in_node "$ipt" -w -I OUTPUT 1 -j "$EGRESS_CHAIN"
    in_node "$ipt" -w -I FORWARD 1 -j "$EGRESS_CHAIN"
  done
  # Prove the counter counts: one probe to TEST-NET-1 must be seen and dropped.
  in_node curl -s --max-time 1 http://192.0.2.1/ >/dev/null 2>&1 || true
  [[ $(egress_drops) -ge 1 ]] || die "the egress guard did not count a probe to 192.0.2.1"
  in_node iptables -w -Z "$EGRESS_CHAIN"
  in_node ip6tables -w -Z "$EGRESS_CHAIN"
  log "egress guard armed (probe counted, counter zeroed)"
}

# Packets dropped by the egress guard's last rule, IPv4 + IPv6.
egress_drops() {
  local total=0 n ipt
  for ipt in iptables ip6tables; do
    n=$(in_node "$ipt" -w -L "$EGRESS_CHAIN" -v -x -n 2>/dev/null | awk '$3 == "DROP" { s += $1 } END { print s + 0 }')
    total=$((total + n))
  done
  echo "$total"
}

pki_up() {
  local p=$NODE_DIR/pki
  [[ -f $p/.done ]] && return
  log "PKI and tokens"
  mkdir -p "$p"
  (
    cd "$p"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
      -subj "/CN=civic-node CA" -keyout ca.key -out ca.crt 2>/dev/null
    issue apiserver "/CN=kube-apiserver" \
      "subjectAltName=IP:$NODE_IP,IP:$HOST_LINK_NODE,IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost" \
      serverAuth
    issue kubelet "/CN=$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME" serverAuth
    # The apiserver's identity towards the kubelet (logs, exec, port-forward).
    issue apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" "" clientAuth
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
    # token,user,uid,"groups": the uid is the component's id, which token_of looks up.
    : >tokens.csv
    add_token admin civic-node-admin system:masters
    add_token kubelet "system:node:$NODE_NAME" system:nodes
    add_token controller-manager system:kube-controller-manager ""
    add_token scheduler system:kube-scheduler ""
    add_token kube-proxy system:kube-proxy ""
    add_token coredns node-tier:coredns ""
    chmod 600 ./*.key tokens.csv
  )
  touch "$p/.done"
}

# issue NAME SUBJECT EXTENSIONS USAGE: a key and a certificate of the node CA (cwd: pki).
issue() {
  local name=$1 subject=$2 ext=$3 usage=$4
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subject" \
    -keyout "$name.key" -out "$name.csr" 2>/dev/null
  {
    [[ -n $ext ]] && printf '%s\n' "$ext"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=%s\n' "$usage"
  } >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

add_token() {
  local id=$1 user=$2 groups=$3 token
  token=$(openssl rand -hex 24)
  printf '%s,%s,%s,"%s"\n' "$token" "$user" "$id" "$groups" >>tokens.csv
}

# kubeconfig FILE TOKEN-ID SERVER
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NODE_NAME
  cluster:
    certificate-authority: $NODE_DIR/pki/ca.crt
    server: $3
users:
- name: $2
  user:
    token: $(token_of "$2")
contexts:
- name: $NODE_NAME
  context: {cluster: $NODE_NAME, user: $2}
current-context: $NODE_NAME
EOF
  chmod 600 "$1"
}

configs_up() {
  local c=$NODE_DIR/config local_api="https://127.0.0.1:$APISERVER_PORT"
  [[ -f $c/.done ]] && return
  log "component configuration"
  mkdir -p "$c" "$NODE_DIR/cni/conf" "$NODE_DIR/cni/ipam" "$NODE_DIR/pod-logs"
  kubeconfig "$(kubeconfig_host)" admin "https://$HOST_LINK_NODE:$APISERVER_PORT"
  local id
  for id in kubelet controller-manager scheduler kube-proxy coredns; do
    kubeconfig "$c/$id.kubeconfig" "$id" "$local_api"
  done
  # No nameserver: the kubelet bases pod DNS on this file, and nothing may be asked outside.
  printf 'search %s\n' "$CLUSTER_DOMAIN" >"$c/resolv.conf"

  cat >"$c/containerd.toml" <<EOF
version = 3
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$NODE_DIR/containerd/containerd.sock"
[ttrpc]
  address = "$NODE_DIR/containerd/containerd.sock.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  disable_apparmor = true
  # No CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$NODE_TOOLS_BIN/runc"
        Root = "$NODE_DIR/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$NODE_TOOLS_DIR/cni"]
    conf_dir = "$NODE_DIR/cni/conf"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF

  cat >"$NODE_DIR/cni/conf/10-civic.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "civic-node",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
               "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP", "rangeStart": "10.250.0.10"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "loopback"}
  ]
}
EOF

  cat >"$c/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $NODE_DIR/pki/kubelet.crt
tlsPrivateKeyFile: $NODE_DIR/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $NODE_DIR/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
clusterDNS: [$NODE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $c/resolv.conf
podLogsDir: $NODE_DIR/pod-logs
containerRuntimeEndpoint: unix://$NODE_DIR/containerd/containerd.sock
volumePluginDir: $NODE_DIR/kubelet-plugins
makeIPTablesUtilChains: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
maxPods: 60
# Short sync periods: Secret volumes and projected tokens refresh within seconds.
syncFrequency: 10s
shutdownGracePeriod: 0s
EOF

  cat >"$c/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection: {kubeconfig: $c/kube-proxy.kubeconfig}
# Leave the host-wide conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF

  # Cluster names only; anything else is answered NXDOMAIN here and never forwarded.
  cat >"$c/Corefile" <<EOF
$CLUSTER_DOMAIN:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $NODE_IP
    errors
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $c/coredns.kubeconfig $NODE_NAME
    }
    cache 5
}
.:53 {
    bind $NODE_IP
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
  touch "$c/.done"
}

# RBAC the node's own components need beyond the defaults: the apiserver's kubelet client, and
# CoreDNS reading services.
node_rbac() {
  kubectl_node apply -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: node-tier:apiserver-kubelet-client}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:kubelet-api-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-tier:coredns}
rules:
  - {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
  - {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: node-tier:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-tier:coredns}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "node-tier:coredns"}]
EOF
}

start_components() {
  local c=$NODE_DIR/config p=$NODE_DIR/pki
  launch etcd "$NODE_TOOLS_BIN/etcd" --name civic-node --data-dir "$NODE_DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster civic-node=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    --unsafe-no-fsync
  wait_for etcd 30 in_node curl -sf http://127.0.0.1:2381/health

  launch kube-apiserver "$KUBE_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" --token-auth-file="$p/tokens.csv" \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$p/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --enable-aggregator-routing=true \
    --allow-privileged=false --profiling=false
  wait_for kube-apiserver 90 admin_curl /readyz

  launch kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig="$c/controller-manager.kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --controllers='*,-bootstrapsigner,-tokencleaner' --profiling=false
  launch kube-scheduler "$KUBE_BIN/kube-scheduler" \
    --kubeconfig="$c/scheduler.kubeconfig" --leader-elect=false --bind-address=127.0.0.1 \
    --profiling=false
  node_rbac

  mkdir -p "$NODE_DIR/containerd"
  launch containerd env PATH="$NODE_TOOLS_BIN:/usr/sbin:/usr/bin:/sbin:/bin" \
    "$NODE_TOOLS_BIN/containerd" --config "$c/containerd.toml"
  wait_for containerd 30 "$NODE_TOOLS_BIN/ctr" --address "$NODE_DIR/containerd/containerd.sock" version
  import_images "$NODE_DIR/images/pause.tar"

  launch kubelet "$KUBE_BIN/kubelet" --config="$c/kubelet.yaml" \
    --kubeconfig="$c/kubelet.kubeconfig" --root-dir="$NODE_DIR/kubelet" \
    --cert-dir="$NODE_DIR/kubelet-pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --v=1
  launch kube-proxy "$KUBE_BIN/kube-proxy" --config="$c/kube-proxy.yaml"
  launch coredns "$NODE_TOOLS_BIN/coredns" -conf "$c/Corefile"
  wait_for "node $NODE_NAME Ready" 120 node_ready
  wait_for "default ServiceAccount" 60 kubectl_node -n default get serviceaccount default
}

node_ready() {
  [[ $(kubectl_node get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

import_images() {
  local archive
  for archive in "$@"; do
    "$NODE_TOOLS_BIN/ctr" --address "$NODE_DIR/containerd/containerd.sock" -n k8s.io \
      images import --no-unpack=false --local "$archive" >/dev/null ||
      die "ctr could not import $archive"
    log "imported $(basename "$archive")"
  done
}

# The pause image the sandboxes run, built from the Kubernetes source (scripts/images.sh).
pause_image_up() {
  mkdir -p "$NODE_DIR/images"
  [[ -f $NODE_DIR/images/pause.tar ]] && return
  local built
  built=$(bash scripts/images.sh pause | awk -v ref="$PAUSE_IMAGE" '$2 == ref { print $1 }')
  [[ -f $built ]] || die "scripts/images.sh built no $PAUSE_IMAGE"
  cp "$built" "$NODE_DIR/images/pause.tar"
}

record_host_paths() {
  local f=$NODE_DIR/host-paths-created p
  [[ -f $f ]] && return
  : >"$f"
  for p in "${HOST_PATHS[@]}"; do
    [[ -e $p ]] || echo "$p" >>"$f"
  done
}

cmd_up() {
  [[ $(id -u) == 0 ]] || die "run as root"
  for t in "$KUBE_BIN/kube-apiserver" "$KUBE_BIN/kubelet" "$NODE_TOOLS_BIN/containerd" \
    "$NODE_TOOLS_BIN/runc" "$NODE_TOOLS_BIN/etcd" "$NODE_TOOLS_BIN/coredns"; do
    [[ -x $t ]] || die "$t is missing: run scripts/kube/build.sh"
  done
  for t in iptables ip6tables nsenter openssl curl kubectl; do
    command -v "$t" >/dev/null || die "$t is missing: run scripts/setup.sh"
  done
  local start=$SECONDS
  mkdir -p "$NODE_DIR"/{run,logs}
  record_host_paths
  mkdir -p "$(tracking_cgroup)"
  network_up
  pki_up
  configs_up
  pause_image_up
  start_components
  log "node up in $((SECONDS - start))s"
  echo "KUBECONFIG=$(kubeconfig_host)"
}

# ---------------------------------------------------------------------------------------------
# down

# stop_component NAME: SIGTERM, then SIGKILL after a grace period.
stop_component() {
  local name=$1 pid i
  pid=$(cat "$(pid_file "$name")" 2>/dev/null) || return 0
  rm -f "$(pid_file "$name")"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || { log "$name stopped"; return 0; }
    sleep 0.25
  done
  kill -KILL "$pid" 2>/dev/null || true
  log "$name killed"
}

# Every process still in a cgroup: the node's tracking cgroup (containerd's shims), and the pods'
# cgroups the kubelet made under kubepods in each hierarchy.
kill_cgroup_members() {
  local procs pid
  for _ in 1 2 3 4 5; do
    procs=$(node_cgroups | sed 's|$|/cgroup.procs|' | xargs -r cat 2>/dev/null | sort -u) || true
    [[ -z $procs ]] && return 0
    for pid in $procs; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.5
  done
  log "warning: processes still in the node's cgroups: $procs"
}

# The node's cgroup directories in every hierarchy, deepest first.
node_cgroups() {
  local roots=() d
  shopt -s nullglob
  for d in /sys/fs/cgroup/*/"$CGROUP_NAME" /sys/fs/cgroup/*/kubepods*; do roots+=("$d"); done
  shopt -u nullglob
  [[ ${#roots[@]} == 0 ]] && return 0
  find "${roots[@]}" -depth -type d 2>/dev/null || true
}

remove_cgroups() {
  local dir
  # Depth first: a cgroup directory goes only once its children have.
  while read -r dir; do rmdir "$dir" 2>/dev/null || true; done < <(node_cgroups)
}

unmount_under() {
  local prefix=$1 m
  # Deepest first; lazy so a busy mount cannot stop the cleanup.
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v p="$prefix" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

cmd_down() {
  [[ $(id -u) == 0 ]] || die "run as root"
  local i start=$SECONDS
  # The kubelet first, so it restarts nothing; then the pods (crictl tears their sandboxes and
  # networks down through containerd), then the rest.
  stop_component kubelet
  if running containerd && [[ -x $NODE_TOOLS_BIN/crictl ]]; then
    timeout 60 "$NODE_TOOLS_BIN/crictl" --runtime-endpoint "unix://$NODE_DIR/containerd/containerd.sock" \
      rmp --all --force >/dev/null 2>&1 || log "warning: crictl rmp failed; killing pods by cgroup"
  fi
  # The rest at once: nothing restarts them, and each takes a moment to exit.
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_component "${COMPONENTS[i]}" &
  done
  wait
  kill_cgroup_members
  remove_cgroups
  unmount_under "$NODE_DIR"
  unmount_under /run/containerd
  if [[ -e /run/netns/$NETNS ]]; then
    ip netns del "$NETNS"
    log "network namespace $NETNS removed (bridge, links, iptables rules with it)"
  fi
  ip link del "$HOST_VETH" 2>/dev/null || true
  remove_host_paths
  rm -rf "$NODE_DIR"
  log "node down in $((SECONDS - start))s"
}

# Host-wide paths: removed when the node made them, else only the node's own entries.
remove_host_paths() {
  local f=$NODE_DIR/host-paths-created p
  if [[ -f $f ]]; then
    while read -r p; do
      [[ -n $p ]] && unmount_under "$p" && rm -rf "$p"
    done <"$f"
  fi
  # Symlinks into this node's pod logs, and the CNI cache of its network.
  find /var/log/containers -maxdepth 1 -type l -lname "$NODE_DIR/*" -delete 2>/dev/null || true
  rm -rf /var/lib/cni/results/civic-node-* 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# status

cmd_status() {
  local name state up=0
  for name in "${COMPONENTS[@]}"; do
    if running "$name"; then state="running (pid $(cat "$(pid_file "$name")"))"; up=$((up + 1)); else state="stopped"; fi
    printf '%-24s %s\n' "$name" "$state"
  done
  if [[ -e /run/netns/$NETNS ]]; then
    printf '%-24s %s\n' "egress guard drops" "$(egress_drops)"
  fi
  if ((up == ${#COMPONENTS[@]})) && node_ready; then
    echo "node $NODE_NAME Ready"
    echo "KUBECONFIG=$(kubeconfig_host)"
  else
    echo "node not ready ($up of ${#COMPONENTS[@]} components running)"
    return 1
  fi
}

cmd_egress_check() {
  local drops
  [[ -e /run/netns/$NETNS ]] || die "the node is not up"
  drops=$(egress_drops)
  if [[ $drops != 0 ]]; then
    in_node iptables -w -L "$EGRESS_CHAIN" -v -x -n >&2
    die "$drops packet(s) tried to leave the node for an address outside it"
  fi
  # The summary: what the node sent, by the rule that let it through.
  in_node iptables -w -L "$EGRESS_CHAIN" -v -x -n |
    awk 'NR > 2 { printf "[node] egress %-8s packets %10s  %s %s %s\n", $3, $1, $7, $9, $10 $11 }' >&2
  log "egress guard: 0 packets to any address outside loopback, pods and services"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  import) shift; import_images "$@" ;;
  egress-check) cmd_egress_check ;;
  *) echo "usage: $0 up|down|status|import <archive>...|egress-check" >&2; exit 2 ;;
esac
