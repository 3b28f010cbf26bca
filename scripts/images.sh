#!/usr/bin/env bash
# Builds the container images as OCI archives without Docker, for
# `ctr -n k8s.io images import <archive>` and pods with `imagePullPolicy: Never`.
#
#   scripts/images.sh [--list] [NAME...]     NAME: civic-sidecar civic-operator civic-fakes
#                                                  mcp-workload pause (default: all)
#
# The three product images and the workload image take their layout (files, USER, ENTRYPOINT,
# CMD) from the final stage of their Dockerfile (scripts/oci_image.py parses it and refuses what
# it cannot reproduce); only the binaries are built here instead of in the build stage, the same
# way: static musl (Rust) or cgo-free (Go) binaries, checked static with ldd. The pause image is
# the Kubernetes pause program compiled from the k8s.io/kubernetes module's source, with that
# module's own pause Dockerfile.
#
# Prints one line per archive on stdout: <path> <reference> <bytes>; --list prints only the
# references. Archives are deterministic, and rewritten only when their content changes.
#
# Environment:
#   CIVIC_IMAGES_DIR   output directory (default: target/images)
#   CIVIC_IMAGE_TAG    tag of the civic-mcp images (default: e2e; pause keeps its version)
#   SOURCE_DATE_EPOCH  timestamp inside the archives (default: 0)
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT_DIR="${CIVIC_IMAGES_DIR:-target/images}"
TAG="${CIVIC_IMAGE_TAG:-e2e}"
REPO=docker.io/civic-mcp
MUSL_TARGET=x86_64-unknown-linux-musl
# The Kubernetes release the test clusters run, and the pause version its build/pause/Makefile
# names (checked below, so a version bump cannot silently keep an old pause).
KUBE_VERSION=v1.34.4
PAUSE_TAG=3.10.1
ALL=(civic-sidecar civic-operator civic-fakes mcp-workload pause)

log() { printf 'images: %s\n' "$*" >&2; }
die() {
  printf 'images: error: %s\n' "$*" >&2
  exit 1
}
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

dockerfile_of() {
  case "$1" in
    civic-sidecar) echo docker/sidecar.Dockerfile ;;
    civic-operator) echo docker/operator.Dockerfile ;;
    civic-fakes) echo docker/civic-fakes.Dockerfile ;;
    mcp-workload) echo tests/e2e/workload/Dockerfile ;;
    *) return 1 ;;
  esac
}

ref_of() {
  case "$1" in
    pause) echo "$REPO/pause:$PAUSE_TAG" ;;
    *) echo "$REPO/$1:$TAG" ;;
  esac
}

list=0
names=()
for arg in "$@"; do
  case "$arg" in
    --list) list=1 ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    -*) die "unknown flag $arg" ;;
    *)
      [[ " ${ALL[*]} " == *" $arg "* ]] || die "unknown image $arg (known: ${ALL[*]})"
      names+=("$arg")
      ;;
  esac
done
[[ ${#names[@]} -gt 0 ]] || names=("${ALL[@]}")

if [[ $list == 1 ]]; then
  for name in "${names[@]}"; do ref_of "$name"; done
  exit 0
fi

[[ "$(uname -m)" == x86_64 ]] || die "only amd64 images are built here (this machine is $(uname -m))"

# A binary with any dynamic dependency could not run on scratch. The output is captured first:
# `ldd | grep -q` under pipefail could fail on ldd's SIGPIPE and pass a dynamic binary.
check_static() {
  local out
  out="$(ldd "$1" 2>&1 || true)"
  if grep -q '=>' <<<"$out"; then
    die "$1 is dynamically linked: $out"
  fi
}

ensure_musl() {
  if ! command -v musl-gcc >/dev/null; then
    log "installing musl-tools (musl-gcc builds ring's C for the musl target)"
    [[ $EUID == 0 ]] || die "musl-gcc missing: apt-get install musl-tools (as root)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null; }
  fi
  if ! rustup target list --installed | grep -qx "$MUSL_TARGET"; then
    log "adding the rust target $MUSL_TARGET"
    rustup target add "$MUSL_TARGET" >&2
  fi
}

work="$(mktemp -d "${TMPDIR:-/tmp}/civic-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT_DIR"

emit() { # archive ref
  printf '%s %s %s\n' "$1" "$2" "$(stat -c %s "$1")"
}

build_rust() { # name -> archive
  local name="$1" dockerfile target pkg bin binary
  dockerfile="$(dockerfile_of "$name")"
  # The package and binary come from the Dockerfile's own cargo build line.
  target="$(python3 scripts/oci_image.py cargo-target "$dockerfile")"
  read -r pkg bin <<<"$target"
  ensure_musl
  log "$name: cargo build -p $pkg --bin $bin ($MUSL_TARGET, release)"
  # One package per build, as in the Dockerfile: building several at once would unify their
  # features and could produce a different binary.
  cargo build --release --locked --target "$MUSL_TARGET" -p "$pkg" --bin "$bin" >&2
  binary="${CARGO_TARGET_DIR:-target}/$MUSL_TARGET/release/$bin"
  check_static "$binary"
  python3 scripts/oci_image.py build --from-dockerfile "$dockerfile" \
    --context-file "/out/$bin=$binary" --ref "$(ref_of "$name")" --output "$OUT_DIR/$name.tar"
  emit "$OUT_DIR/$name.tar" "$(ref_of "$name")"
}

build_workload() {
  local dockerfile binary
  dockerfile="$(dockerfile_of mcp-workload)"
  binary="$work/mcp-workload"
  log "mcp-workload: go build (static, trimmed)"
  # The same flags as the Dockerfile's build stage; GOFLAGS=-mod=readonly fails on an
  # incomplete go.sum instead of fixing it up, GOTOOLCHAIN=local never fetches a toolchain.
  (cd tests/e2e/workload &&
    CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
      go build -trimpath -buildvcs=false -ldflags='-s -w' -o "$binary" .)
  check_static "$binary"
  python3 scripts/oci_image.py build --from-dockerfile "$dockerfile" \
    --context-file "/out/mcp-workload=$binary" --ref "$(ref_of mcp-workload)" \
    --output "$OUT_DIR/mcp-workload.tar"
  emit "$OUT_DIR/mcp-workload.tar" "$(ref_of mcp-workload)"
}

kube_source() { # -> directory of the k8s.io/kubernetes module
  local dir
  dir="$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBE_VERSION"
  if [[ ! -f "$dir/build/pause/linux/pause.c" ]]; then
    log "pause: downloading k8s.io/kubernetes@$KUBE_VERSION (Go module proxy)"
    dir="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  fi
  [[ -f "$dir/build/pause/linux/pause.c" ]] || die "no build/pause/linux/pause.c in $dir"
  echo "$dir"
}

build_pause() {
  local src makefile_tag binary
  src="$(kube_source)/build/pause"
  makefile_tag="$(sed -n 's/^TAG ?= *//p' "$src/Makefile")"
  [[ "$makefile_tag" == "$PAUSE_TAG" ]] ||
    die "k8s.io/kubernetes@$KUBE_VERSION builds pause $makefile_tag, this script names $PAUSE_TAG: update PAUSE_TAG"
  mkdir -p "$work/pause/bin"
  binary="$work/pause/bin/pause-linux-amd64"
  log "pause: gcc -static $src/linux/pause.c"
  # The upstream Makefile's CFLAGS and strip, with "civic" where it puts the git revision.
  gcc -Os -Wall -Werror -static "-DVERSION=v$PAUSE_TAG-civic" -o "$binary" "$src/linux/pause.c"
  strip "$binary"
  check_static "$binary"
  [[ "$("$binary" -v)" == "pause.c v$PAUSE_TAG-civic" ]] || die "the pause binary does not report v$PAUSE_TAG-civic"
  python3 scripts/oci_image.py build --from-dockerfile "$src/Dockerfile" \
    --build-arg BASE=scratch --build-arg ARCH=amd64 \
    --context-file "bin/pause-linux-amd64=$binary" --ref "$(ref_of pause)" --output "$OUT_DIR/pause.tar"
  emit "$OUT_DIR/pause.tar" "$(ref_of pause)"
}

for name in "${names[@]}"; do
  case "$name" in
    mcp-workload) build_workload ;;
    pause) build_pause ;;
    *) build_rust "$name" ;;
  esac
done
log "done: ${#names[@]} image(s) in $OUT_DIR"
