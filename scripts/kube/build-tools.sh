#!/usr/bin/env bash
# Builds the node runtime binaries a single-node Kubernetes 1.34 needs — etcd (+ etcdctl),
# containerd (+ containerd-shim-runc-v2, ctr), runc, the CNI plugins bridge/host-local/loopback/
# portmap, a trimmed CoreDNS and crictl — from Go modules via the module proxy, statically linked,
# into a cache dir outside the repo keyed by the pinned versions. Also installs the non-Go host
# packages the node needs (iptables, conntrack) and runc's build dependencies from Debian.
#
# Each tool is built from its own tiny module under scripts/kube/tools/<tool>/ (go.mod + go.sum
# committed) that requires the tool at the version pinned below; the script checks the two agree.
# Idempotent and non-interactive; meant for a Debian bookworm machine with Go >= 1.26.8, run as
# root (CI runs it). A tool whose binaries already answer their version command (and were built
# with the same recipe) is skipped, so a second run does nothing. Logs go to stderr with the time of
# each step; the last line of stdout is the bin dir. The CNI plugins go to cni/ next to bin/.
#
#   CIVIC_NODE_TOOLS_DIR  install root (default: $HOME/.cache/civic-mcp/node-tools-<versions>)
set -Eeuo pipefail

# ---- Pinned versions: the one place to change them (and the go.mod in scripts/kube/tools/<tool>/).
ETCD_VERSION=v3.6.16            # go.etcd.io/etcd/server/v3 (etcd) and etcdctl/v3
CONTAINERD_VERSION=v2.2.9       # github.com/containerd/containerd/v2
RUNC_VERSION=v1.3.7             # github.com/opencontainers/runc
CNI_PLUGINS_VERSION=v1.10.0     # github.com/containernetworking/plugins
COREDNS_VERSION=v1.12.4         # github.com/coredns/coredns
COREDNS_COMMIT=f32329577fd5     # the v1.12.4 tag's commit (module proxy .info Origin)
CRICTL_VERSION=v1.34.0          # sigs.k8s.io/cri-tools
GO_MIN_VERSION=1.26.8           # the highest `go` line among the tool modules (CNI plugins)

KEY="etcd${ETCD_VERSION#v}-ctd${CONTAINERD_VERSION#v}-runc${RUNC_VERSION#v}"
KEY+="-cni${CNI_PLUGINS_VERSION#v}-dns${COREDNS_VERSION#v}-crictl${CRICTL_VERSION#v}"
TOOLS_DIR="${CIVIC_NODE_TOOLS_DIR:-$HOME/.cache/civic-mcp/node-tools-${KEY}}"
BIN_DIR="$TOOLS_DIR/bin"
CNI_DIR="$TOOLS_DIR/cni"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MOD_ROOT="$REPO_ROOT/scripts/kube/tools"

# Debian packages: iptables (kube-proxy's iptables mode, portmap) and conntrack are for the node;
# libseccomp-dev/pkg-config/gcc/libc6-dev build runc (static libseccomp); file reports linkage.
# No socat: containerd 2's CRI port-forward is native Go (internal/cri/server/sandbox_portforward_linux.go).
APT_PACKAGES=(iptables conntrack libseccomp-dev pkg-config gcc libc6-dev file ca-certificates)

# Build tags and linker flags (part of each tool's recipe stamp: changing them rebuilds the tool).
CTD_PKG=github.com/containerd/containerd/v2
CTD_TAGS="urfave_cli_no_docs no_btrfs no_devmapper no_zfs osusergo netgo static_build"
CTD_LDFLAGS="-s -w -X $CTD_PKG/version.Version=$CONTAINERD_VERSION -X $CTD_PKG/version.Package=$CTD_PKG"
RUNC_TAGS="seccomp urfave_cli_no_docs netgo osusergo"
RUNC_LDFLAGS="-s -w -linkmode external -extldflags -static-pie" # version comes from its VERSION file
CNI_PKG=github.com/containernetworking/plugins
CNI_LDFLAGS="-s -w -X $CNI_PKG/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION"
COREDNS_LDFLAGS="-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_COMMIT"
CRICTL_LDFLAGS="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}"
PLAIN_LDFLAGS="-s -w"
CNI_PLUGINS=(bridge host-local loopback portmap)

TOOLS=(etcd containerd runc cni coredns crictl)
GO=
APT_UPDATED=0
declare -A TIMINGS=()

log() { printf '[node-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'log "ERROR: failed at line $LINENO (exit $?)"' ERR

# step NAME CMD...: runs CMD and prints (and records) how long it took.
step() {
  local name=$1 start secs
  shift
  log "step '$name' started"
  start=$(date +%s)
  "$@"
  secs=$(($(date +%s) - start))
  TIMINGS[$name]=$secs
  log "step '$name' took ${secs}s"
}

# ---- Debian packages ------------------------------------------------------------------------

pkg_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

install_apt_packages() {
  local p missing=()
  for p in "${APT_PACKAGES[@]}"; do
    pkg_installed "$p" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "Debian packages present: ${APT_PACKAGES[*]}"
    return
  fi
  log "installing Debian packages: ${missing[*]}"
  if [[ $APT_UPDATED == 0 ]]; then
    apt-get update -q >&2
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  for p in "${missing[@]}"; do
    pkg_installed "$p" || die "Debian package $p is still missing"
  done
}

# ---- What each tool installs and how to tell it is there ------------------------------------

# tool_files TOOL: the installed paths of TOOL's binaries.
tool_files() {
  local p
  case $1 in
    etcd) printf '%s\n' "$BIN_DIR/etcd" "$BIN_DIR/etcdctl" ;;
    containerd) printf '%s\n' "$BIN_DIR/containerd" "$BIN_DIR/containerd-shim-runc-v2" "$BIN_DIR/ctr" ;;
    runc) printf '%s\n' "$BIN_DIR/runc" ;;
    cni) for p in "${CNI_PLUGINS[@]}"; do printf '%s\n' "$CNI_DIR/$p"; done ;;
    coredns) printf '%s\n' "$BIN_DIR/coredns" ;;
    crictl) printf '%s\n' "$BIN_DIR/crictl" ;;
    *) die "unknown tool $1" ;;
  esac
}

# version_of BINARY_PATH: runs the binary's version command.
version_of() {
  local bin=$1
  case ${bin##*/} in
    etcdctl) "$bin" version ;;
    containerd-shim-runc-v2) "$bin" -v ;;
    coredns) "$bin" -version ;;
    *) "$bin" --version ;;
  esac
}

# expected_version BINARY_PATH: a string the version output must contain.
expected_version() {
  case ${1##*/} in
    etcd) echo "etcd Version: ${ETCD_VERSION#v}" ;;
    etcdctl) echo "etcdctl version: ${ETCD_VERSION#v}" ;;
    containerd) echo "containerd $CTD_PKG $CONTAINERD_VERSION" ;;
    containerd-shim-runc-v2) echo "Version:  $CONTAINERD_VERSION" ;;
    ctr) echo "ctr $CTD_PKG $CONTAINERD_VERSION" ;;
    runc) echo "runc version ${RUNC_VERSION#v}" ;;
    coredns) echo "CoreDNS-${COREDNS_VERSION#v}" ;;
    crictl) echo "crictl version ${CRICTL_VERSION#v}" ;;
    *) echo "CNI ${1##*/} plugin $CNI_PLUGINS_VERSION" ;;
  esac
}

# recipe TOOL: everything that goes into TOOL's build; stored next to the binaries.
recipe() {
  case $1 in
    etcd) echo "etcd $ETCD_VERSION cgo=0 ldflags=[$PLAIN_LDFLAGS]" ;;
    containerd) echo "containerd $CONTAINERD_VERSION cgo=0 tags=[$CTD_TAGS] shim+=no_grpc ldflags=[$CTD_LDFLAGS]" ;;
    runc) echo "runc $RUNC_VERSION cgo=1 pie tags=[$RUNC_TAGS] ldflags=[$RUNC_LDFLAGS]" ;;
    cni) echo "cni $CNI_PLUGINS_VERSION ${CNI_PLUGINS[*]} cgo=0 ldflags=[$CNI_LDFLAGS]" ;;
    coredns) echo "coredns $COREDNS_VERSION cgo=0 main=tools/coredns/main.go ldflags=[$COREDNS_LDFLAGS]" ;;
    crictl) echo "crictl $CRICTL_VERSION cgo=0 ldflags=[$CRICTL_LDFLAGS]" ;;
  esac
}

stamp_file() { echo "$TOOLS_DIR/.recipe-$1"; }

binary_ok() {
  local bin=$1 out
  [[ -x "$bin" ]] || return 1
  out=$(version_of "$bin" 2>&1) || return 1
  [[ $out == *"$(expected_version "$bin")"* ]]
}

tool_ok() {
  local tool=$1 f
  [[ -f "$(stamp_file "$tool")" && "$(cat "$(stamp_file "$tool")")" == "$(recipe "$tool")" ]] || return 1
  while read -r f; do
    binary_ok "$f" || return 1
  done < <(tool_files "$tool")
}

# ---- Go -------------------------------------------------------------------------------------

find_go() {
  if command -v go >/dev/null 2>&1; then
    GO=$(command -v go)
  elif [[ -x /usr/local/go/bin/go ]]; then
    GO=/usr/local/go/bin/go
  else
    die "no Go toolchain (need go >= $GO_MIN_VERSION in PATH or /usr/local/go/bin)"
  fi
  local have
  have=$("$GO" env GOVERSION)
  have=${have#go}
  [[ "$(printf '%s\n' "$GO_MIN_VERSION" "$have" | sort -V | head -n1)" == "$GO_MIN_VERSION" ]] ||
    die "$GO is go$have; the tool modules need go >= $GO_MIN_VERSION"
  local d
  for d in "$(gocmd env GOMODCACHE)" "$(gocmd env GOCACHE)"; do
    [[ "$d/" != "$REPO_ROOT/"* ]] || die "Go cache $d is inside the repo; point GOCACHE/GOMODCACHE elsewhere"
  done
  log "using $GO (go$have)"
}

# gocmd ARGS...: go with a fixed environment: the local toolchain only, no workspace, go.mod and
# go.sum read-only (the committed go.sum must cover the build).
gocmd() { env GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=readonly "$GO" "$@"; }

# check_pin TOOL MODULE VERSION: the tool module's go.mod requires MODULE at VERSION.
check_pin() {
  local mod_file="$MOD_ROOT/$1/go.mod"
  [[ -f "$mod_file" && -f "$MOD_ROOT/$1/go.sum" ]] || die "$MOD_ROOT/$1 lacks go.mod or go.sum"
  grep -Eq "^[[:space:]]*(require[[:space:]]+)?$2[[:space:]]+$3([[:space:]]|$)" "$mod_file" ||
    die "$mod_file does not require $2 $3 (the version pinned in $0); update it with: cd $MOD_ROOT/$1 && GOTOOLCHAIN=local go get $2@$3 && go mod tidy"
}

check_pins() {
  check_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  check_pin etcd go.etcd.io/etcd/etcdctl/v3 "$ETCD_VERSION"
  check_pin containerd "$CTD_PKG" "$CONTAINERD_VERSION"
  check_pin runc github.com/opencontainers/runc "$RUNC_VERSION"
  check_pin cni "$CNI_PKG" "$CNI_PLUGINS_VERSION"
  check_pin coredns github.com/coredns/coredns "$COREDNS_VERSION"
  check_pin crictl sigs.k8s.io/cri-tools "$CRICTL_VERSION"
}

# gobuild TOOL_MODULE OUT CGO TAGS LDFLAGS PKG...: go build in scripts/kube/tools/TOOL_MODULE.
gobuild() {
  local dir="$MOD_ROOT/$1" out=$2 cgo=$3 tags=$4 ldflags=$5
  shift 5
  local args=(build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out")
  [[ -z $tags ]] || args+=(-tags "$tags")
  [[ ${BUILD_MODE:-} == "" ]] || args+=("-buildmode=$BUILD_MODE")
  (cd "$dir" && CGO_ENABLED=$cgo gocmd "${args[@]}" "$@")
}

# install_bin TMP DEST: moves a freshly built binary into place (atomically).
install_bin() {
  chmod 0755 "$1"
  mv -f "$1" "$2"
}

# ---- Builds ---------------------------------------------------------------------------------

build_etcd() {
  gobuild etcd "$BIN_DIR/.etcd.tmp" 0 "" "$PLAIN_LDFLAGS" go.etcd.io/etcd/server/v3
  gobuild etcd "$BIN_DIR/.etcdctl.tmp" 0 "" "$PLAIN_LDFLAGS" go.etcd.io/etcd/etcdctl/v3
  install_bin "$BIN_DIR/.etcd.tmp" "$BIN_DIR/etcd"
  install_bin "$BIN_DIR/.etcdctl.tmp" "$BIN_DIR/etcdctl"
}

build_containerd() {
  local b
  gobuild containerd "$BIN_DIR/.containerd.tmp" 0 "$CTD_TAGS" "$CTD_LDFLAGS" "$CTD_PKG/cmd/containerd"
  gobuild containerd "$BIN_DIR/.containerd-shim-runc-v2.tmp" 0 "$CTD_TAGS no_grpc" "$CTD_LDFLAGS" \
    "$CTD_PKG/cmd/containerd-shim-runc-v2"
  gobuild containerd "$BIN_DIR/.ctr.tmp" 0 "$CTD_TAGS" "$CTD_LDFLAGS" "$CTD_PKG/cmd/ctr"
  for b in containerd containerd-shim-runc-v2 ctr; do
    install_bin "$BIN_DIR/.$b.tmp" "$BIN_DIR/$b"
  done
}

# runc needs cgo (libcontainer/nsenter); linked static-pie against glibc and Debian's libseccomp.a,
# as runc's own `make static` does.
build_runc() {
  BUILD_MODE=pie gobuild runc "$BIN_DIR/.runc.tmp" 1 "$RUNC_TAGS" "$RUNC_LDFLAGS" \
    github.com/opencontainers/runc
  install_bin "$BIN_DIR/.runc.tmp" "$BIN_DIR/runc"
}

build_cni() {
  local tmp="$TOOLS_DIR/.cni.tmp" p
  rm -rf "$tmp"
  mkdir -p "$tmp" "$CNI_DIR"
  gobuild cni "$tmp/" 0 "" "$CNI_LDFLAGS" "$CNI_PKG/plugins/main/bridge" \
    "$CNI_PKG/plugins/ipam/host-local" "$CNI_PKG/plugins/main/loopback" "$CNI_PKG/plugins/meta/portmap"
  for p in "${CNI_PLUGINS[@]}"; do
    install_bin "$tmp/$p" "$CNI_DIR/$p"
  done
  rm -rf "$tmp"
}

# CoreDNS with only the plugins the cluster DNS needs (scripts/kube/tools/coredns/main.go).
build_coredns() {
  gobuild coredns "$BIN_DIR/.coredns.tmp" 0 "" "$COREDNS_LDFLAGS" .
  install_bin "$BIN_DIR/.coredns.tmp" "$BIN_DIR/coredns"
}

build_crictl() {
  gobuild crictl "$BIN_DIR/.crictl.tmp" 0 "" "$CRICTL_LDFLAGS" sigs.k8s.io/cri-tools/cmd/crictl
  install_bin "$BIN_DIR/.crictl.tmp" "$BIN_DIR/crictl"
}

# build_tool TOOL: builds TOOL, checks its binaries' versions, records its recipe.
build_tool() {
  local tool=$1 f
  rm -f "$(stamp_file "$tool")"
  "build_$tool"
  while read -r f; do
    binary_ok "$f" || die "$f does not report $(expected_version "$f"): $(version_of "$f" 2>&1 | head -n3 || true)"
  done < <(tool_files "$tool")
  recipe "$tool" >"$(stamp_file "$tool")"
}

# ---- Report ---------------------------------------------------------------------------------

linkage() {
  local desc
  desc=$(file -b "$1")
  case $desc in
    *"static-pie linked"* | *"statically linked"*) echo static ;;
    *"dynamically linked"*) echo dynamic ;;
    *) echo "unknown ($desc)" ;;
  esac
}

report() {
  local tool f link line
  for tool in "${TOOLS[@]}"; do
    while read -r f; do
      link=$(linkage "$f")
      line=$(version_of "$f" 2>&1 | grep -F "$(expected_version "$f")" | sed -n 1p)
      log "  ${f#"$TOOLS_DIR"/}: $link, $(du -h "$f" | cut -f1), '${line#"${line%%[![:space:]]*}"}'"
      [[ $link == static ]] || die "$f is not statically linked: $(file -b "$f")"
    done < <(tool_files "$tool")
  done
  log "  runc: $(version_of "$BIN_DIR/runc" | grep -E '^libseccomp' || echo 'no libseccomp')"
}

# du can see files vanish while another Go build fills the cache; its total is still good.
modcache_mb() {
  local mb
  mb=$({ du -sm "$(gocmd env GOMODCACHE)" 2>/dev/null || true; } | cut -f1)
  echo "${mb:-0}"
}

main() {
  [[ $(id -u) == 0 ]] || die "run as root (installs Debian packages)"
  local total_start tool todo=() cache_before cache_after
  total_start=$(date +%s)
  step "debian packages" install_apt_packages
  mkdir -p "$BIN_DIR" "$CNI_DIR"
  exec 9>"$TOOLS_DIR/.lock"
  flock 9
  for tool in "${TOOLS[@]}"; do
    tool_ok "$tool" || todo+=("$tool")
  done
  if ((${#todo[@]} == 0)); then
    log "all node tools ($KEY) already in $TOOLS_DIR; nothing to do"
    printf '%s\n' "$BIN_DIR"
    return
  fi
  log "to build: ${todo[*]} (into $TOOLS_DIR)"
  find_go
  check_pins
  cache_before=$(modcache_mb)
  for tool in "${todo[@]}"; do
    step "build $tool" build_tool "$tool"
  done
  cache_after=$(modcache_mb)
  log "built in this run:"
  for tool in "${todo[@]}"; do
    log "  $tool ${TIMINGS["build $tool"]}s"
  done
  log "Go module cache: ${cache_before} MiB -> ${cache_after} MiB (+$((cache_after - cache_before)) MiB)"
  log "binaries:"
  report
  log "done in $(($(date +%s) - total_start))s; binaries in $BIN_DIR, CNI plugins in $CNI_DIR"
  printf '%s\n' "$BIN_DIR"
}

main "$@"
