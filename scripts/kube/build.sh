#!/usr/bin/env bash
# Builds the Kubernetes binaries of the real-apiserver and node test tiers from the published Go
# modules (k8s.io/kubernetes v$KUBE_VERSION, pinned by scripts/kube/module/go.mod and go.sum),
# then the node runtime (etcd, containerd, runc, CNI plugins, CoreDNS, crictl) with
# scripts/kube/build-tools.sh. Everything goes into a cache dir outside the repository
# ($KUBE_DIR, see scripts/kube/env.sh).
#
# Idempotent: a binary that already reports its pinned version is not rebuilt, so a second run
# takes seconds. Needs Go (>= the module's go line) and the Go module proxy; run as root (the
# node tools step installs a few Debian packages).
#
#   CIVIC_KUBE_DIR   install root (default $HOME/.cache/civic-mcp/kube-<version>)
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/kube/env.sh
source scripts/kube/env.sh
MODULE_DIR=$PWD/scripts/kube/module
TARGETS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { printf '[kube-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'log "ERROR: failed at line $LINENO (exit $?)"' ERR

version_ok() { "$KUBE_BIN/$1" --version 2>/dev/null | grep -qx "Kubernetes v$KUBE_VERSION"; }

# The values hack/lib/version.sh stamps into an official build, so `--version` and the
# apiserver's /version report the release (the operator reads it to choose the sidecar mode).
ldflags() {
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=${KUBE_VERSION%%.*}"
    flags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION") -X $pkg.gitTreeState=clean"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s' "$flags"
}

build_kubernetes() {
  local missing=() t start
  for t in "${TARGETS[@]}"; do version_ok "$t" || missing+=("$t"); done
  if [[ ${#missing[@]} == 0 ]]; then
    log "Kubernetes v$KUBE_VERSION binaries already in $KUBE_BIN"
    return
  fi
  grep -q "k8s.io/kubernetes v$KUBE_VERSION" "$MODULE_DIR/go.mod" ||
    die "scripts/kube/module/go.mod does not require k8s.io/kubernetes v$KUBE_VERSION"
  mkdir -p "$KUBE_BIN"
  start=$SECONDS
  log "building ${missing[*]} v$KUBE_VERSION (go $(go env GOVERSION))"
  local pkgs=()
  for t in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$t"); done
  # Static, like the release binaries; -mod=readonly: go.sum pins every module.
  (cd "$MODULE_DIR" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
    -ldflags "$(ldflags)" -o "$KUBE_BIN/" "${pkgs[@]}")
  for t in "${missing[@]}"; do
    version_ok "$t" || die "$t does not report v$KUBE_VERSION"
  done
  log "built ${missing[*]} in $((SECONDS - start))s"
}

main() {
  local start=$SECONDS
  command -v go >/dev/null || die "go is not installed"
  build_kubernetes
  CIVIC_NODE_TOOLS_DIR=$NODE_TOOLS_DIR bash scripts/kube/build-tools.sh >/dev/null
  log "done in $((SECONDS - start))s; binaries in $KUBE_BIN"
}

main "$@"
