#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager 1.20.2 from Debian bookworm's `kubernetes`
# source package and installs them into a cache dir outside the repo, for the real-apiserver test
# tier (DESIGN.md §6 tier 4). Also makes sure Debian's etcd is installed.
#
# Idempotent and non-interactive; meant for a Debian bookworm machine, run as root (CI runs it).
# Skips everything when both binaries already run `--version` and etcd is present.
#
#   CIVIC_KUBE_DIR      install root (default: $HOME/.cache/civic-mcp/kube-1.20.2); binaries in bin/
#   CIVIC_KUBE_KEEP_SRC set to 1 to keep the source tree and Go build cache after a successful build
set -Eeuo pipefail

KUBE_VERSION=1.20.2
KUBE_DIR="${CIVIC_KUBE_DIR:-$HOME/.cache/civic-mcp/kube-${KUBE_VERSION}}"
BIN_DIR="$KUBE_DIR/bin"
SRC_DIR="$KUBE_DIR/src"
GO_BIN=/usr/lib/go-1.19/bin
TARGETS=(kube-apiserver kube-controller-manager)
APT_UPDATED=0

log() { printf '[kube-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'log "ERROR: failed at line $LINENO (exit $?)"' ERR

# step NAME CMD...: runs CMD and prints how long it took.
step() {
  local name=$1 start end
  shift
  log "step '$name' started"
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "step '$name' took $((end - start))s"
}

binaries_ok() {
  local t
  for t in "${TARGETS[@]}"; do
    [[ -x "$BIN_DIR/$t" ]] || return 1
    "$BIN_DIR/$t" --version 2>/dev/null | grep -q "v${KUBE_VERSION}" || return 1
  done
}

etcd_ok() { command -v etcd >/dev/null 2>&1 || [[ -x /usr/bin/etcd ]]; }

apt_update_once() {
  if [[ $APT_UPDATED == 0 ]]; then
    apt-get update -q
    APT_UPDATED=1
  fi
}

apt_install() {
  apt_update_once
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

install_etcd() {
  etcd_ok || apt_install etcd-server
  etcd_ok || die "etcd is still missing after installing etcd-server"
  # sed, not head: head exits after one line and, under pipefail, etcd's SIGPIPE failed setup.
  etcd --version | sed -n 1p >&2
}

install_build_deps() {
  # make/rsync/jq/bash: hack/ scripts; dpkg-dev: unpacks the source package.
  apt_install golang-1.19-go golang-github-modern-go-reflect2-dev make rsync jq dpkg-dev \
    ca-certificates findutils diffutils
  [[ -x "$GO_BIN/go" ]] || die "golang-1.19-go did not provide $GO_BIN/go"
}

ensure_deb_src() {
  if [[ -z "$(apt-cache showsrc kubernetes 2>/dev/null)" ]]; then
    log "adding a deb-src entry for bookworm main"
    cat >/etc/apt/sources.list.d/civic-bookworm-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    APT_UPDATED=0
    apt_update_once
  fi
  [[ -n "$(apt-cache showsrc kubernetes 2>/dev/null)" ]] || die "apt has no source package 'kubernetes'"
}

# Prints the unpacked tree's path (the package version is 1.20.5+really1.20.2).
source_tree() {
  [[ -d "$SRC_DIR" ]] || return 0
  find "$SRC_DIR" -maxdepth 1 -mindepth 1 -type d -name "kubernetes-*really${KUBE_VERSION}" -print -quit
}

# Like source_tree, but fails when there is none (guards the rm -rf below).
tree_or_die() {
  local tree
  tree=$(source_tree)
  [[ -n "$tree" && -d "$tree/vendor" ]] || die "no unpacked kubernetes source in $SRC_DIR"
  printf '%s\n' "$tree"
}

fetch_source() {
  if [[ -n "$(source_tree)" && -f "$(source_tree)/.civic-unpacked" ]]; then
    log "source already unpacked in $(source_tree)"
    return
  fi
  rm -rf "$SRC_DIR"
  mkdir -p "$SRC_DIR"
  (cd "$SRC_DIR" && apt-get source -q kubernetes)
  local tree
  tree=$(source_tree)
  [[ -n "$tree" ]] || die "unpacked source tree for ${KUBE_VERSION} not found in $SRC_DIR"
  [[ -d "$tree/vendor" && -d "$tree/cmd/kube-apiserver" ]] || die "$tree lacks vendor/ or cmd/kube-apiserver"
  touch "$tree/.civic-unpacked"
}

# The vendored reflect2 1.0.1 crashes at run time with Go >= 1.18 (map iteration via linkname);
# Debian's 1.0.2 is API-compatible. The tree builds in GOPATH mode, so swapping the files suffices.
replace_reflect2() {
  local tree vend src=/usr/share/gocode/src/github.com/modern-go/reflect2
  tree=$(tree_or_die)
  vend="$tree/vendor/github.com/modern-go/reflect2"
  [[ -f "$src/go_above_118.go" ]] || die "$src is not reflect2 >= 1.0.2"
  rm -rf "$vend"
  mkdir -p "$vend"
  cp -a "$src"/. "$vend"/
  rm -f "$vend/go.mod" "$vend/go.sum"
  sed -i 's|^# github.com/modern-go/reflect2 v1.0.1 => github.com/modern-go/reflect2 v1.0.1|# github.com/modern-go/reflect2 v1.0.2 => github.com/modern-go/reflect2 v1.0.2|' "$tree/vendor/modules.txt"
}

make_target() {
  local what=$1 tree
  tree=$(tree_or_die)
  # No .git in the tree: version.sh takes v1.20.2 from the archive's export-subst values.
  (cd "$tree" && env PATH="$GO_BIN:$PATH" CGO_ENABLED=0 GOFLAGS= GO111MODULE=off \
    make WHAT="cmd/$what")
  [[ -x "$tree/_output/bin/$what" ]] || die "make did not produce _output/bin/$what"
}

install_binaries() {
  local tree t
  tree=$(tree_or_die)
  mkdir -p "$BIN_DIR"
  for t in "${TARGETS[@]}"; do
    install -m 0755 "$tree/_output/bin/$t" "$BIN_DIR/$t.tmp"
    mv -f "$BIN_DIR/$t.tmp" "$BIN_DIR/$t"
    "$BIN_DIR/$t" --version >&2
  done
}

main() {
  [[ $(id -u) == 0 ]] || die "run as root (installs Debian packages)"
  local total_start
  total_start=$(date +%s)
  step "etcd" install_etcd
  if binaries_ok; then
    log "kube-apiserver and kube-controller-manager v${KUBE_VERSION} already in $BIN_DIR; nothing to do"
    exit 0
  fi
  step "build deps" install_build_deps
  step "deb-src" ensure_deb_src
  step "fetch source" fetch_source
  step "replace reflect2" replace_reflect2
  step "build kube-apiserver" make_target kube-apiserver
  step "build kube-controller-manager" make_target kube-controller-manager
  step "install" install_binaries
  binaries_ok || die "installed binaries do not report v${KUBE_VERSION}"
  if [[ "${CIVIC_KUBE_KEEP_SRC:-0}" != 1 ]]; then
    step "clean source" rm -rf "$SRC_DIR"
  fi
  log "done in $(($(date +%s) - total_start))s; binaries in $BIN_DIR"
}

main "$@"
